"""In-process llama.cpp: resident models under a memory budget, prefix-state reuse, the backend.

``ModelManager`` (a context manager) keeps loaded models resident, least recently used
first out when a new one would pass the budget; a model whose estimate (weights + KV cache
for its context) exceeds the whole budget is refused before loading. ``LlamaBackend``
renders the GGUF's chat template itself so it knows which tokens are the stable prefix
(system prompt + repo map): their KV state is kept in memory per model and saved under
``cache/prompt-cache/`` so a restarted process skips evaluating them again.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ModelError
from orchestrator.models import budget as shared_budget
from orchestrator.models.backends import Completion, CompletionRequest, ModelIdentity
from orchestrator.models.gguf import read_gguf
from orchestrator.models.registry import ModelRecord
from orchestrator.models.sampling import generate_constrained
from orchestrator.store.storage import atomic_write

MIN_PREFIX_TOKENS = 16  # shorter prefixes are cheaper to evaluate than to restore
STATES_PER_MODEL = 4
STATES_ON_DISK = 32
BUDGET_SHARE = 0.6


def default_budget() -> int:
    """60% of the RAM available now (MemAvailable), the default ``models.memory_budget``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * BUDGET_SHARE)
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") * BUDGET_SHARE)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass
class Resident:
    """A loaded model with its chat formatter and saved prefix states."""

    record: ModelRecord
    llm: Any
    n_ctx: int
    estimate: int
    formatter: Any
    states: OrderedDict[str, bytes] = field(default_factory=OrderedDict)


class ModelManager:
    """Keeps llama.cpp models loaded under a memory budget; LRU eviction; refusal before loading."""

    def __init__(
        self,
        budget: int | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        cache_dir: Path | None = None,
        ledger: Path | None = None,
    ) -> None:
        self.budget = budget if budget is not None else default_budget()
        # with a workspace state dir, the budget is shared with its other processes (model_budget)
        self.ledger = ledger
        self._reservations: dict[str, shared_budget.Reservation] = {}
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.cache_dir = cache_dir
        self._resident: OrderedDict[str, Resident] = OrderedDict()

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resident(self) -> list[str]:
        """Names of loaded models, least recently used first."""
        return list(self._resident)

    def used(self) -> int:
        """Estimated bytes the resident models occupy."""
        return sum(r.estimate for r in self._resident.values())

    def context_for(self, record: ModelRecord) -> int:
        """The context a model is loaded with: the configured one, capped at what it was trained for."""
        return min(self.n_ctx, record.context_length) if record.context_length > 0 else self.n_ctx

    def acquire(self, record: ModelRecord) -> Resident:
        """The loaded model for ``record``: free if resident, else loaded (evicting LRU models to fit)."""
        key = f"{record.name}:{record.sha256}"
        if key in self._resident:
            self._resident.move_to_end(key)
            return self._resident[key]
        n_ctx = self.context_for(record)
        estimate = record.memory_estimate(n_ctx)
        if estimate > self.budget:
            raise ModelError(
                f"model {record.name!r} ({record.path}) needs about {_gib(estimate)} "
                f"(weights {_gib(record.size)} + KV cache {_gib(estimate - record.size)} for {n_ctx} tokens), "
                f"more than the memory budget of {_gib(self.budget)}; use a smaller quantisation than "
                f"{record.quantisation} or a shorter context ([models] context_length), or raise [models] memory_budget"
            )
        while self._resident and self.used() + estimate > self.budget:
            self.evict(next(iter(self._resident)))
        if self.ledger is not None:
            self._reservations[key] = shared_budget.reserve(
                self.ledger, os.getpid(), record.sha256, estimate, self.budget, shared=record.size
            )
        try:
            resident = self._load(record, n_ctx, estimate)
        except BaseException:
            self._release(key)
            raise
        self._resident[key] = resident
        return resident

    def evict(self, key: str) -> None:
        """Unload one resident model (by ``name:sha256`` key or by name)."""
        if key not in self._resident:
            key = next((k for k in self._resident if k.split(":", 1)[0] == key), key)
        resident = self._resident.pop(key, None)
        if resident is not None:
            resident.llm.close()
        self._release(key)

    def _release(self, key: str) -> None:
        reservation = self._reservations.pop(key, None)
        if reservation is not None:
            shared_budget.release(reservation)

    def close(self) -> None:
        """Unload every model."""
        for key in list(self._resident):
            self.evict(key)

    def _load(self, record: ModelRecord, n_ctx: int, estimate: int) -> Resident:
        path = Path(record.path)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise ModelError(f"{path}: model file of {record.name!r} not found; register it again") from exc
        if size != record.size:
            raise ModelError(f"{path}: changed since it was registered as {record.name!r}; run `converge model add`")
        read_gguf(path)  # a clear error for a damaged file instead of llama.cpp's
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        try:
            with _quiet_stderr():
                llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=self.n_threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"{path}: llama.cpp cannot load it: {exc}") from exc
        template = record.chat_template or _CHATML
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", errors="replace")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", errors="replace")
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        return Resident(record=record, llm=llm, n_ctx=n_ctx, estimate=estimate, formatter=formatter)


# Used when a GGUF carries no chat template.
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """Silence llama.cpp's C-level logging while loading (it writes to fd 2 directly)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LlamaBackend:
    """A registered GGUF model run in-process through a ModelManager."""

    def __init__(self, record: ModelRecord, manager: ModelManager) -> None:
        self.record = record
        self.manager = manager

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(name=self.record.name, sha256=self.record.sha256, kind="llama")

    @property
    def context_window(self) -> int:
        """The context the model is loaded with, in tokens."""
        return self.manager.context_for(self.record)

    def complete(self, request: CompletionRequest) -> Completion:
        resident = self.manager.acquire(self.record)
        llm = resident.llm
        prompt, prefix = self._tokens(resident, request)
        if len(prompt) + request.max_tokens > resident.n_ctx:
            raise ModelError(
                f"prompt of {len(prompt)} tokens + {request.max_tokens} to generate exceeds the context of "
                f"{resident.n_ctx} tokens of model {self.record.name!r}; shorten the prompt or raise context_length"
            )
        start = time.perf_counter()
        reused = self._prepare_prefix(resident, prefix)
        grammar = self._grammar(request)
        try:
            if grammar is not None:
                tokens, finish = generate_constrained(
                    llm, prompt, grammar, request.max_tokens, request.temperature, request.seed, request.lookup
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
                )
                choice = result["choices"][0]
                text, finish = choice["text"], str(choice.get("finish_reason") or "stop")
                tokens_out = int(result["usage"]["completion_tokens"])
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model {self.record.name!r}: llama.cpp failed: {exc}") from exc
        return Completion(
            text=text,
            tokens_in=len(prompt),
            tokens_out=tokens_out,
            seconds=time.perf_counter() - start,
            finish_reason=finish,
            prefix_reused=reused,
        )

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
        import jinja2

        try:
            return str(resident.formatter(messages=messages).prompt)
        except (ValueError, jinja2.TemplateError) as first:
            if messages[0]["role"] != "system" or len(messages) < 2:
                raise ModelError(f"chat template of model {self.record.name!r} rejects the prompt: {first}") from first
            merged = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
            try:
                return str(resident.formatter(messages=[merged, *messages[2:]]).prompt)
            except (ValueError, jinja2.TemplateError) as exc:
                raise ModelError(f"chat template of model {self.record.name!r} rejects the prompt: {exc}") from exc

    def _grammar(self, request: CompletionRequest) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar

        if request.grammar is not None:
            return LlamaGrammar.from_string(request.grammar, verbose=False)
        if request.json_schema is None:
            return None

        try:
            with _quiet_stderr():
                return LlamaGrammar.from_json_schema(json.dumps(request.json_schema), verbose=False)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ModelError(f"JSON schema cannot be turned into a grammar: {exc}") from exc

    def _prepare_prefix(self, resident: Resident, prefix: list[int]) -> int:
        """Make the KV cache hold ``prefix``; returns how many prefix tokens were reused, not evaluated."""
        llm = resident.llm
        n = len(prefix)
        if n < MIN_PREFIX_TOKENS:
            return 0
        if llm.n_tokens >= n and list(llm.input_ids[:n]) == prefix:
            return n  # already in the KV cache from the previous call
        key = hashlib.sha256(json.dumps(prefix).encode()).hexdigest()[:32]
        state = resident.states.get(key)
        disk = self._state_file(key)
        if state is None and disk is not None and disk.is_file():
            state = disk.read_bytes()
        if state is not None and _restore(llm, prefix, state):
            resident.states[key] = state
            resident.states.move_to_end(key)
            return n
        llm.reset()
        llm.eval(prefix)
        state = _snapshot(llm)
        resident.states[key] = state
        while len(resident.states) > STATES_PER_MODEL:
            resident.states.popitem(last=False)
        if disk is not None:
            atomic_write(disk, state)
            _prune(disk.parent)
        return 0

    def _state_file(self, key: str) -> Path | None:
        if self.manager.cache_dir is None:
            return None
        n_ctx = self.manager.context_for(self.record)
        return self.manager.cache_dir / f"{self.record.sha256[:16]}-{n_ctx}-{key}.state"


def _prune(directory: Path, keep: int = STATES_ON_DISK) -> None:
    """Keep the most recently written prefix states on disk; the cache is a cache, not a record."""
    states = sorted(directory.glob("*.state"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in states[keep:]:
        stale.unlink(missing_ok=True)


def _snapshot(llm: Any) -> bytes:
    """The context's state (KV cache of the evaluated tokens) as bytes."""
    import llama_cpp

    size = llama_cpp.llama_state_get_size(llm.ctx)
    buffer = (ctypes.c_uint8 * int(size))()
    written = llama_cpp.llama_state_get_data(llm.ctx, buffer, size)
    return ctypes.string_at(buffer, int(written))


def _restore(llm: Any, tokens: list[int], state: bytes) -> bool:
    """Load a snapshot taken after evaluating ``tokens``; False if llama.cpp rejects it."""
    import llama_cpp

    buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
    if llama_cpp.llama_state_set_data(llm.ctx, buffer, len(state)) != len(state):
        llm.reset()
        return False
    llm.input_ids[: len(tokens)] = tokens
    llm.n_tokens = len(tokens)
    # Restored logits are stale: llama-cpp-python must decode before it samples.
    llm._requires_eval = True
    return True
