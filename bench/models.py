"""Local model costs through Converge, side by side with direct llama-cpp-python, on the embedded SmolLM2.

Prints `name: value` lines:
  direct_tokens_per_s        generation through llama-cpp-python's create_chat_completion
  converge_tokens_per_s      the same prompt through Converge's LlamaBackend
  converge_over_direct       ratio (target >= 0.95)
  prefix_tokens              size of the shared stable prefix
  prefix_first_s             first call: the prefix is evaluated
  prefix_second_s            second call, another question on the same prefix
  prefix_speedup             first / second (target >= 5)
  role_switch_ms             switching between two resident models, median (target < 50)
  constrained_s_per_token    JSON-schema constrained decoding, seconds per generated token
  free_s_per_token           free decoding of the same prompt
  constrained_over_free      ratio (target <= 1.2)
Usage: python bench/models.py [--tokens N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.models.backends import CompletionRequest
from orchestrator.models.llama import LlamaBackend, ModelManager, _quiet_stderr
from orchestrator.models.registry import describe, embedded_model_path

N_CTX = 4096
SYSTEM = "You are a helpful assistant."
STORY = "Write a long story about a lighthouse keeper and a storm. Use many sentences."


def line(name: str, value: float | int) -> None:
    print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}", flush=True)


def throughput(tokens: int, rounds: int) -> None:
    """Tokens/s of the same greedy generation, direct vs through Converge, rounds interleaved (best of each)."""
    path = embedded_model_path()
    with _quiet_stderr():
        direct = Llama(model_path=str(path), n_ctx=N_CTX, verbose=False)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": STORY}]
    request = CompletionRequest(system=SYSTEM, user=STORY, max_tokens=tokens)
    direct_rates, ours = [], []
    with ModelManager(n_ctx=N_CTX) as manager:
        backend = LlamaBackend(describe(path, "default"), manager)
        for _ in range(rounds):
            start = time.perf_counter()
            out = direct.create_chat_completion(messages=messages, max_tokens=tokens, temperature=0.0, seed=0)
            direct_rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
            done = backend.complete(request)
            ours.append(done.tokens_out / done.seconds)
    direct.close()
    line("direct_tokens_per_s", max(direct_rates))
    line("converge_tokens_per_s", max(ours))
    line("converge_over_direct", max(ours) / max(direct_rates))


def prefix_reuse() -> None:
    """A ~2,000-token stable prefix: first call evaluates it, the second reuses its KV state."""
    repo_map = "\n".join(f"src/pkg/mod_{i}.py: def handler_{i}(request, limit={i}) -> Response" for i in range(75))
    with ModelManager(n_ctx=N_CTX) as manager:
        backend = LlamaBackend(describe(embedded_model_path(), "default"), manager)
        backend.complete(CompletionRequest(system="warm up", user="hi", max_tokens=1))
        first = backend.complete(
            CompletionRequest(system=SYSTEM, prefix=repo_map, user="Where is handler_3?", max_tokens=4)
        )
        second = backend.complete(
            CompletionRequest(system=SYSTEM, prefix=repo_map, user="Where is handler_42?", max_tokens=4)
        )
    line("prefix_tokens", second.prefix_reused)
    line("prefix_first_s", first.seconds)
    line("prefix_second_s", second.seconds)
    line("prefix_speedup", first.seconds / second.seconds)


def role_switch(rounds: int) -> None:
    """Alternating between two resident models (e.g. planner and coder)."""
    record = describe(embedded_model_path(), "planner-model")
    other = record.model_copy(update={"name": "coder-model"})
    with ModelManager(n_ctx=1024) as manager:
        manager.acquire(record)
        manager.acquire(other)
        times = []
        for i in range(rounds * 20):
            start = time.perf_counter()
            manager.acquire(record if i % 2 else other)
            times.append((time.perf_counter() - start) * 1000)
    print(f"role_switch_ms: {statistics.median(times):.4f}", flush=True)


def constrained(tokens: int, rounds: int) -> None:
    """Seconds per generated token with and without a JSON-schema grammar."""
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "steps": {"type": "array", "items": {"type": "string"}}},
        "required": ["title", "steps"],
    }
    user = "Plan the steps to add a --verbose flag to a command line tool. Answer in JSON."
    with ModelManager(n_ctx=N_CTX) as manager:
        backend = LlamaBackend(describe(embedded_model_path(), "default"), manager)
        free, bound = [], []
        for _ in range(rounds):
            a = backend.complete(CompletionRequest(system=SYSTEM, user=user, max_tokens=tokens))
            b = backend.complete(CompletionRequest(system=SYSTEM, user=user, max_tokens=tokens, json_schema=schema))
            free.append(a.seconds / max(a.tokens_out, 1))
            bound.append(b.seconds / max(b.tokens_out, 1))
    line("constrained_s_per_token", min(bound))
    line("free_s_per_token", min(free))
    line("constrained_over_free", min(bound) / min(free))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory():
        throughput(args.tokens, args.rounds)
        prefix_reuse()
        role_switch(args.rounds)
        constrained(args.tokens, args.rounds)


if __name__ == "__main__":
    main()
