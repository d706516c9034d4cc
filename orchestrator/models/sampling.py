"""Grammar-constrained decoding that checks the grammar lazily.

llama-cpp-python matches the grammar against the whole vocabulary for every token; here the token is
drawn first without the grammar and only checked against it, and only when the grammar rejects it is
the draw repeated over the tokens it allows: the same distribution, at close to free decoding's cost.
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


def generate_constrained(
    llm: Any,
    prompt: list[int],
    grammar: Any,
    max_tokens: int,
    temperature: float,
    seed: int,
    on_token: Callable[[], object] | None = None,
) -> tuple[list[int], str]:
    """Generate after ``prompt`` under ``grammar`` (a LlamaGrammar); returns (tokens, finish reason).
    ``on_token`` is called after each token (the thread refit)."""
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()
    _eval_reusing_prefix(llm, prompt)
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
    rules = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), grammar._root.encode())
    single = internals.LlamaTokenDataArray(n_vocab=1)
    full = internals.LlamaTokenDataArray(n_vocab=n_vocab)
    out: list[int] = []
    try:
        for _ in range(max_tokens):
            logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            token = int(chain.sample(llm._ctx, -1))
            single.candidates_data.id[0] = token
            single.candidates_data.logit[0] = logits[token]
            single.candidates.size = 1
            llama_cpp.llama_sampler_apply(rules, ctypes.byref(single.candidates))
            if math.isinf(float(single.candidates_data.logit[0])):
                # Rejected: draw again over what the grammar allows.
                full.copy_logits(_as_array(logits, n_vocab))
                llama_cpp.llama_sampler_apply(rules, ctypes.byref(full.candidates))
                llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(full.candidates))
                token = int(full.candidates_data.id[full.candidates.selected])
            llama_cpp.llama_sampler_accept(rules, token)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                return out, "stop"
            out.append(token)
            if on_token is not None:
                on_token()
            llm.eval([token])
        return out, "length"
    finally:
        llama_cpp.llama_sampler_free(rules)
        chain.close()


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
