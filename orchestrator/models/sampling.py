"""Grammar-constrained decoding that checks the grammar lazily, with prompt-lookup drafts when greedy.

llama-cpp-python matches the grammar against the whole vocabulary for every token; here the token is
drawn first without the grammar and only checked against it, and only when the grammar rejects it is
the draw repeated over the tokens it allows: the same distribution, at close to free decoding's cost.

Greedy decoding may also draft (``lookup`` > 0): the tokens that followed the latest earlier occurrence
of the last few tokens (prompt or answer) are evaluated in one batch and kept while greedy decoding
would have chosen them; an edit mostly copies the file shown, and the answer is the one without drafts.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05  # llama-cpp-python's defaults, so both paths sample alike
NGRAM_MAX, NGRAM_MIN = 4, 2  # longest and shortest run of tokens looked up for a draft
DRAFT_START = 4  # a batch of n tokens costs about n/2 single ones on a CPU: drafts start short


def generate_constrained(
    llm: Any,
    prompt: list[int],
    grammar: Any,
    max_tokens: int,
    temperature: float,
    seed: int,
    on_token: Callable[[], object] | None = None,
    lookup: int = 0,
) -> tuple[list[int], str]:
    """Generate after ``prompt`` under ``grammar`` (a LlamaGrammar); returns (tokens, finish reason).

    ``on_token`` is called after each token (the thread refit); ``lookup``: draft up to that many tokens
    by prompt lookup (greedy decoding only; 0: never).
    """
    vocab = llm._model.vocab
    _eval_reusing_prefix(llm, prompt)
    rules = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), grammar._root.encode())
    if not rules:
        raise ValueError("the grammar does not parse (llama.cpp refused it)")
    picker = _Picker(llm, rules, temperature, seed)
    drafts = lookup if temperature <= 0 else 0
    size = min(drafts, DRAFT_START)  # drafts grow while they are kept, shrink when they are not
    out: list[int] = []
    try:
        token = picker.pick(-1)
        while len(out) < max_tokens:
            llama_cpp.llama_sampler_accept(rules, token)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                return out, "stop"
            out.append(token)
            if on_token is not None:
                on_token()
            if len(out) == max_tokens:
                break
            draft = find_draft(prompt + out, min(size, max_tokens - len(out))) if drafts else []
            _decode(llm, [token, *draft])
            token = picker.pick(0)
            size = min(drafts, size * 2)
            for n, guess in enumerate(draft, start=1):
                if token != guess or llama_cpp.llama_vocab_is_eog(vocab, token):
                    _forget(llm, len(draft) - n + 1)  # the KV cache past the last kept token
                    size = max(1, n - 1)
                    break
                llama_cpp.llama_sampler_accept(rules, token)
                out.append(token)
                if on_token is not None:
                    on_token()
                if len(out) == max_tokens:
                    _forget(llm, len(draft) - n)
                    return out, "length"
                token = picker.pick(n)
        return out, "length"
    finally:
        llama_cpp.llama_sampler_free(rules)
        picker.close()


class _Picker:
    """Draws the next token from one output row of the last batch: free draw first, the grammar only on rejection."""

    def __init__(self, llm: Any, rules: Any, temperature: float, seed: int) -> None:
        self.llm, self.rules = llm, rules
        self.n_vocab = llm.n_vocab()
        sampler_class: Any = internals.LlamaSampler
        chain: Any = sampler_class()
        if temperature <= 0:
            chain.add_greedy()
        else:
            chain.add_top_k(TOP_K)
            chain.add_top_p(TOP_P, 1)
            chain.add_min_p(MIN_P, 1)
            chain.add_temp(temperature)
            chain.add_dist(seed)
        self.chain = chain
        self.single = internals.LlamaTokenDataArray(n_vocab=1)
        self.full = internals.LlamaTokenDataArray(n_vocab=self.n_vocab)

    def pick(self, row: int) -> int:
        logits = llama_cpp.llama_get_logits_ith(self.llm.ctx, row)
        token = int(self.chain.sample(self.llm._ctx, row))
        single = self.single
        single.candidates_data.id[0] = token
        single.candidates_data.logit[0] = logits[token]
        single.candidates.size = 1
        llama_cpp.llama_sampler_apply(self.rules, ctypes.byref(single.candidates))
        if not math.isinf(float(single.candidates_data.logit[0])):
            return token
        # Rejected: draw again over what the grammar allows.
        self.full.copy_logits(_as_array(logits, self.n_vocab))
        llama_cpp.llama_sampler_apply(self.rules, ctypes.byref(self.full.candidates))
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(self.full.candidates))
        return int(self.full.candidates_data.id[self.full.candidates.selected])

    def close(self) -> None:
        self.chain.close()


def find_draft(tokens: list[int], limit: int) -> list[int]:
    """Up to ``limit`` tokens that followed the latest earlier occurrence of the last 4 (then 3, 2) tokens."""
    if limit <= 0:
        return []
    for size in range(min(NGRAM_MAX, len(tokens) - 1), NGRAM_MIN - 1, -1):
        tail = tokens[-size:]
        first = tail[0]
        # latest occurrence first: an answer copying a file copies from where it copied last
        for start in range(len(tokens) - size - 1, -1, -1):
            if tokens[start] == first and tokens[start : start + size] == tail:
                follow = tokens[start + size : start + size + limit]
                if follow:
                    return follow
    return []


def _decode(llm: Any, tokens: list[int]) -> None:
    """Evaluate ``tokens`` after what the cache holds, with logits for every one (row i: after token i)."""
    n_past = llm.n_tokens
    llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
    llm._batch.set_batch(batch=tokens, n_past=n_past, logits_all=True)
    llm._ctx.decode(llm._batch)
    llm.input_ids[n_past : n_past + len(tokens)] = tokens
    llm.n_tokens = n_past + len(tokens)


def _forget(llm: Any, count: int) -> None:
    """Drop the last ``count`` evaluated tokens (a draft's rejected tail) from the cache."""
    if count > 0:
        llm.n_tokens -= count
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)


def _as_array(pointer: Any, n: int) -> Any:
    return np.ctypeslib.as_array(pointer, shape=(n,))


def _eval_reusing_prefix(llm: Any, prompt: list[int]) -> None:
    """Evaluate ``prompt``, keeping the KV cache of the longest prefix it shares with what is cached."""
    cached = llm.input_ids[: llm.n_tokens].tolist()
    common = 0
    for a, b in zip(cached, prompt, strict=False):
        if a != b:
            break
        common += 1
    # The last prompt token is always evaluated: its logits are what the first draw samples from.
    llm.n_tokens = min(common, len(prompt) - 1)
    llm.eval(prompt[llm.n_tokens :])
