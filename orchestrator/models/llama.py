"""The in-process llama.cpp backend: threads fitted per call, prompts fitted to the window, prefix reuse.

``LlamaBackend`` renders the GGUF's chat template itself so it knows which tokens are the
stable prefix (system prompt + repo map): their KV state is kept in memory per model and
saved in the prompt cache (:mod:`orchestrator.models.promptcache`) so a restarted process
skips evaluating them again. Before each call it tells llama.cpp how many threads to use
(:mod:`orchestrator.models.threads`) and cuts a prompt that would pass the context window
(:mod:`orchestrator.models.window`). Models are loaded and kept by ``ModelManager``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from typing import Any

import jinja2
from llama_cpp.llama_grammar import LlamaGrammar

from orchestrator.errors import translate
from orchestrator.models.backends import Completion, CompletionRequest, ModelIdentity
from orchestrator.models.manager import ModelManager, Resident, default_budget, quiet_stderr, where_to_set
from orchestrator.models.promptcache import restore, snapshot
from orchestrator.models.registry import ModelRecord
from orchestrator.models.sampling import generate_constrained
from orchestrator.models.threads import Refit, ThreadCounts, decide
from orchestrator.models.window import fit

__all__ = ["LlamaBackend", "ModelManager", "default_budget", "quiet_stderr"]

MIN_PREFIX_TOKENS = 16  # shorter prefixes are cheaper to evaluate than to restore
STATES_PER_MODEL = 4


class LlamaBackend:
    """A registered GGUF model run in-process through a ModelManager."""

    def __init__(self, record: ModelRecord, manager: ModelManager) -> None:
        self.record = record
        self.manager = manager

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(name=self.record.name, sha256=self.record.sha256, kind="llama")

    def complete(self, request: CompletionRequest) -> Completion:
        resident = self.manager.acquire(self.record)
        llm = resident.llm
        start = time.perf_counter()
        fitted = fit(
            request,
            resident.n_ctx,
            lambda r: len(self._tokens(resident, r)[0]),
            f"model {self.record.name!r}",
            self._raise_hint(resident),
        )
        request = fitted.request
        prompt, prefix = self._tokens(resident, request)
        settings = resident.settings
        _fit_threads(resident, decide(settings.threads, settings.threads_batch))
        # and again every few tokens: a test suite that starts mid-answer takes its core back
        refit = Refit(settings.threads, settings.threads_batch, lambda counts: _fit_threads(resident, counts))
        reused = self._prepare_prefix(resident, prefix)
        grammar = self._grammar(request)
        try:
            if grammar is not None:
                tokens, finish = generate_constrained(
                    llm,
                    prompt,
                    grammar,
                    request.max_tokens,
                    request.temperature,
                    request.seed,
                    on_token=refit,
                    lookup=request.lookup,
                )
                text = llm.detokenize(tokens).decode("utf-8", errors="replace")
                tokens_out = len(tokens)
            else:
                result = llm.create_completion(
                    prompt=prompt,
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    seed=request.seed,
                    stop=[resident.formatter.eos_token],
                    # called once per token with (ids, logits), like llama-cpp-python's StoppingCriteriaList
                    stopping_criteria=refit if refit.auto else None,
                )
                choice = result["choices"][0]
                text, finish = choice["text"], str(choice.get("finish_reason") or "stop")
                tokens_out = int(result["usage"]["completion_tokens"])
        except (ValueError, RuntimeError) as exc:
            raise translate(exc, "llama", f"model {self.record.name!r}: llama.cpp failed") from exc
        return Completion(
            text=text,
            tokens_in=len(prompt),
            tokens_out=tokens_out,
            seconds=time.perf_counter() - start,
            finish_reason=finish,
            prefix_reused=reused,
            lines_cut=fitted.lines_cut,
        )

    def _raise_hint(self, resident: Resident) -> str:
        trained = self.record.context_length
        room = f"; the model was trained for {trained}" if trained > resident.n_ctx else " (the model's maximum)"
        return f"raise {where_to_set(self.record.name, 'context_length')} (now {resident.n_ctx}{room})"

    def _tokens(self, resident: Resident, request: CompletionRequest) -> tuple[list[int], list[int]]:
        """The prompt's tokens and the leading run of them that is the stable prefix."""
        messages = [asdict(m) for m in request.messages()]
        # The head is the same conversation with an empty task: it shares exactly the stable part.
        full = self._render(resident, messages)
        head = self._render(resident, [messages[0], {"role": "user", "content": ""}])
        llm = resident.llm
        tokens: list[int] = llm.tokenize(full.encode("utf-8"), add_bos=False, special=True)
        head_tokens: list[int] = llm.tokenize(head.encode("utf-8"), add_bos=False, special=True)
        common = 0
        for a, b in zip(tokens, head_tokens, strict=False):
            if a != b:
                break
            common += 1
        # Stop short of the end: the last prompt token must be evaluated to sample from it.
        return tokens, tokens[: min(common, len(tokens) - 1)]

    def _render(self, resident: Resident, messages: list[dict[str, str]]) -> str:
        """The prompt text through the model's chat template; templates without a system role get it folded in."""
        rejects = f"chat template of model {self.record.name!r} rejects the prompt"
        try:
            return str(resident.formatter(messages=messages).prompt)
        except (ValueError, jinja2.TemplateError) as first:
            if messages[0]["role"] != "system" or len(messages) < 2:
                raise translate(first, "llama", rejects) from first
            merged = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
            try:
                return str(resident.formatter(messages=[merged, *messages[2:]]).prompt)
            except (ValueError, jinja2.TemplateError) as exc:
                raise translate(exc, "llama", rejects) from exc

    def _grammar(self, request: CompletionRequest) -> Any:
        if request.grammar is not None:
            return LlamaGrammar.from_string(request.grammar, verbose=False)
        if request.json_schema is None:
            return None
        try:
            with quiet_stderr():
                return LlamaGrammar.from_json_schema(json.dumps(request.json_schema), verbose=False)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise translate(exc, "llama", "JSON schema cannot be turned into a grammar") from exc

    def _prepare_prefix(self, resident: Resident, prefix: list[int]) -> int:
        """Make the KV cache hold ``prefix``; returns how many prefix tokens were reused, not evaluated."""
        llm = resident.llm
        n = len(prefix)
        if n < MIN_PREFIX_TOKENS:
            return 0
        if llm.n_tokens >= n and list(llm.input_ids[:n]) == prefix:
            return n  # already in the KV cache from the previous call
        key = hashlib.sha256(json.dumps(prefix).encode()).hexdigest()[:32]
        cache = self.manager.cache
        disk = cache.path(self.record.sha256, resident.n_ctx, key) if cache is not None else None
        state = resident.states.get(key)
        if state is None and cache is not None and disk is not None:
            state = cache.get(disk)
        if state is not None and restore(llm, prefix, state):
            resident.states[key] = state
            resident.states.move_to_end(key)
            return n
        llm.reset()
        llm.eval(prefix)
        state = snapshot(llm)
        resident.states[key] = state
        while len(resident.states) > STATES_PER_MODEL:
            resident.states.popitem(last=False)
        if cache is not None and disk is not None:
            cache.put(disk, state)
        return 0


def _fit_threads(resident: Resident, counts: ThreadCounts) -> None:
    """Tell llama.cpp the thread counts (for ``auto``: the cores free right now) if they changed."""
    import llama_cpp  # noqa: PLC0415  lazy: the native library, loaded only with a model

    wanted = (counts.threads, counts.threads_batch)
    if wanted != resident.threads:
        llama_cpp.llama_set_n_threads(resident.llm.ctx, *wanted)
        resident.threads = wanted
