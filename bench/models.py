"""Local model costs through Converge, side by side with direct llama-cpp-python, on the embedded SmolLM2.

Prints `name: value` lines:
  direct_tokens_per_s        generation through llama-cpp-python's create_chat_completion
  converge_tokens_per_s      the same prompt through Converge's LlamaBackend, same threads and context
  converge_over_direct       ratio (target >= 0.95)
  load                       what ran beside the model for the loaded figures (a sandboxed CPU-bound suite)
  {quiet,loaded}_{default,all}_{prompt,gen}_tps   prompt and generated tokens/s, quiet and under that load,
                             with the default threads (auto) and with all cores
  loaded_ratio               default over all cores, generation under load (target >= 1.8)
  quiet_ratio                the same, quiet (target >= 0.9)
  kv_bytes_8k_f16            KV cache of an 8k context in f16 (from the GGUF header)
  kv_bytes_8k_q8_0           the same in q8_0
  kv_{f16,q8_0}_{prompt,gen}_tps   tokens/s with each KV cache type (q8_0 with flash attention)
  prefix_tokens              size of the shared stable prefix
  prefix_first_s             first call: the prefix is evaluated
  prefix_second_s            second call, another question on the same prefix
  prefix_speedup             first / second (target >= 5)
  role_switch_ms             switching between two resident models, median (target < 50)
  constrained_over_free      constrained / free decoding seconds per token (target <= 1.2)
  grounded_grammar_build_ms  GBNF of an edit answer grounded in a 2,000-line file: built (target < 50)
  grounded_grammar_compile_ms  the same grammar compiled by llama.cpp
  grounded_over_schema       seconds per token under that grammar / under the plain edit schema (target <= 1.2)
  edit_tokens_per_s          a search/replace answer over a 300-line file, decoded token by token
  edit_lookup_tokens_per_s   the same answer with prompt-lookup drafts (the coder card's lookup)
  lookup_speedup             the second over the first (target >= 1.5; the answers are identical)
Usage: python bench/models.py [--tokens N] [--rounds R] [--only SECTION,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.agents.cards import load_cards
from orchestrator.agents.grounding import edits_grammar, edits_schema
from orchestrator.config import ModelsConfig
from orchestrator.errors import ConvergeError
from orchestrator.models.backends import CompletionRequest
from orchestrator.models.gguf import read_gguf
from orchestrator.models.grammar import literal
from orchestrator.models.llama import LlamaBackend, ModelManager, quiet_stderr
from orchestrator.models.registry import describe, embedded_model_path
from orchestrator.models.threads import decide, usable_cores
from orchestrator.sandbox.factory import open_sandbox
from orchestrator.store.setup import add_repo, init_workspace

N_CTX = 4096
EDIT_CTX = 8192  # a 300-line file and its edit answer
SYSTEM = "You are a helpful assistant."
STORY = "Write a long story about a lighthouse keeper and a storm. Use many sentences."
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample-repo"
HEAVY_TESTS = """
import pytest

@pytest.mark.parametrize("k", range(12))
def test_heavy(k):
    total = 0
    for i in range(1_500_000):
        total += i * i % 7
    assert total > 0
"""
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b"}
GIT_ENV |= {"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}


def line(name: str, value: float | int | str) -> None:
    print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}", flush=True)


class SandboxLoad:
    """What runs beside a model during a refinement: a CPU-bound test suite in Converge's sandbox, in a loop."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._base = Path(tempfile.mkdtemp(prefix="converge-bench-load-"))
        self.runs = 0

    def start(self) -> str:
        """Start the load; says what it is (a host process when no sandbox engine is there)."""
        try:
            return self._start_sandbox()
        except (ConvergeError, OSError, subprocess.CalledProcessError) as exc:
            self._proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            return f"a CPU-bound host process (no sandbox: {str(exc)[:80]})"

    def _start_sandbox(self) -> str:
        src = self._base / "sample"
        shutil.copytree(SAMPLE, src)
        (src / "tests" / "test_heavy.py").write_text(HEAVY_TESTS)
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "sample"]):
            subprocess.run(["git", *args], cwd=src, env=GIT_ENV, check=True)
        ws = init_workspace(self._base / "ws")
        add_repo(ws, str(src), name="sample")
        tree = self._base / "tree"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(tree), "HEAD"], cwd=ws.src / "sample", check=True
        )
        ready, failed = threading.Event(), []

        def loop() -> None:
            try:
                with open_sandbox(ws, "sample", tree, label="bench-load") as box:
                    ready.set()
                    while not self._stop.is_set():
                        box.run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], timeout=300)
                        self.runs += 1
            except ConvergeError as exc:
                failed.append(exc)
                ready.set()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        ready.wait(300)
        if failed:
            raise failed[0]
        time.sleep(2.0)  # the first suite is running
        return "a sandboxed CPU-bound test suite (pytest in a loop in Converge's Docker sandbox)"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._base, ignore_errors=True)


def throughput(tokens: int, rounds: int) -> None:
    """Tokens/s of the same greedy generation, direct vs through Converge, rounds interleaved (best of each).

    Same settings: the direct model is given, before each call, the threads Converge's default
    (``auto``) picks at that moment, so both run with as many threads as the machine has free.
    """
    with quiet_stderr():
        direct = llama_cpp.Llama(model_path=str(embedded_model_path()), n_ctx=N_CTX, verbose=False)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": STORY}]
    request = CompletionRequest(system=SYSTEM, user=STORY, max_tokens=tokens)
    direct_rates, ours = [], []
    with ModelManager(config=ModelsConfig(context_length=N_CTX)) as manager:
        backend = LlamaBackend(describe(embedded_model_path(), "default"), manager)
        for _ in range(rounds + 1):  # the first round warms both up
            counts = decide("auto", "auto")
            llama_cpp.llama_set_n_threads(direct.ctx, counts.threads, counts.threads_batch)
            start = time.perf_counter()
            out = direct.create_chat_completion(messages=messages, max_tokens=tokens, temperature=0.0, seed=0)
            direct_rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
            done = backend.complete(request)
            ours.append(done.tokens_out / done.seconds)
    direct.close()
    line("direct_tokens_per_s", max(direct_rates[1:]))
    line("converge_tokens_per_s", max(ours[1:]))
    line("converge_over_direct", max(ours[1:]) / max(direct_rates[1:]))


def _rates(backend: LlamaBackend, tokens: int, rounds: int, tag: str) -> tuple[float, float]:
    """Best prompt and generation tokens/s: a fresh ~400-token prompt, then generating after it."""
    prompt_rates, gen_rates = [], []
    filler = " ".join(f"item {i} weighs {i * 7 % 13} kg;" for i in range(60))
    for i in range(rounds):
        user = f"[{tag} {i} {time.time_ns()}] Inventory: {filler} Summarise the inventory as a story."
        first = backend.complete(CompletionRequest(system=SYSTEM, user=user, max_tokens=1))
        prompt_rates.append(first.tokens_in / first.seconds)
        # The same prompt again: it is in the KV cache, so this times generation.
        gen = backend.complete(CompletionRequest(system=SYSTEM, user=user, max_tokens=tokens))
        gen_rates.append(gen.tokens_out / gen.seconds)
    return max(prompt_rates), max(gen_rates)


def threads(tokens: int, rounds: int) -> None:
    """Default (auto) threads against all cores, quiet and beside a sandboxed CPU-bound test suite."""
    cores = usable_cores()
    settings = {"default": ModelsConfig(context_length=N_CTX), "all": ModelsConfig(
        context_length=N_CTX, threads=cores, threads_batch=cores
    )}  # fmt: skip
    figures: dict[str, float] = {}
    with ModelManager(config=settings["default"]) as auto, ModelManager(config=settings["all"]) as full:
        backends = {"default": LlamaBackend(describe(embedded_model_path(), "a"), auto),
                    "all": LlamaBackend(describe(embedded_model_path(), "b"), full)}  # fmt: skip
        for backend in backends.values():
            backend.complete(CompletionRequest(system=SYSTEM, user="warm up", max_tokens=1))
        for condition in ("quiet", "loaded"):
            load = SandboxLoad() if condition == "loaded" else None
            try:
                if load is not None:
                    line("load", load.start())
                for name, backend in backends.items():
                    prompt, gen = _rates(backend, tokens, rounds, f"{condition}-{name}")
                    figures[f"{condition}_{name}_prompt_tps"] = prompt
                    figures[f"{condition}_{name}_gen_tps"] = gen
            finally:
                if load is not None:
                    load.stop()
    for name, value in figures.items():
        line(name, round(value, 1))
    line("loaded_ratio", figures["loaded_default_gen_tps"] / figures["loaded_all_gen_tps"])
    line("quiet_ratio", figures["quiet_default_gen_tps"] / figures["quiet_all_gen_tps"])


def kv_types(tokens: int, rounds: int) -> None:
    """KV cache bytes of an 8k context and tokens/s, f16 against q8_0 (which needs flash attention)."""
    info = read_gguf(embedded_model_path())
    line("kv_bytes_8k_f16", info.kv_cache_bytes(8192, "f16"))
    line("kv_bytes_8k_q8_0", info.kv_cache_bytes(8192, "q8_0"))
    for kv in ("f16", "q8_0"):
        with ModelManager(config=ModelsConfig(context_length=N_CTX, kv_type=kv)) as manager:
            backend = LlamaBackend(describe(embedded_model_path(), f"kv-{kv}"), manager)
            backend.complete(CompletionRequest(system=SYSTEM, user="warm up", max_tokens=1))
            prompt, gen = _rates(backend, tokens, rounds, kv)
        line(f"kv_{kv}_prompt_tps", round(prompt, 1))
        line(f"kv_{kv}_gen_tps", round(gen, 1))


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
    planner = describe(embedded_model_path(), "planner-model")
    other = planner.model_copy(update={"name": "coder-model"})
    with ModelManager(n_ctx=1024) as manager:
        manager.acquire(planner)
        manager.acquire(other)
        times = []
        for i in range(rounds * 20):
            start = time.perf_counter()
            manager.acquire(planner if i % 2 else other)
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


def _module(lines: int) -> str:
    """A plausible Python module of ``lines`` lines (functions of six lines, each a little different)."""
    out = ['"""Orders and their totals."""\n', "\n"]
    n = 0
    while len(out) < lines:
        out += [
            f"def total_{n}(order, rate={n % 7}):\n",
            f'    """The total of order line {n}, with tax at {n % 7} percent."""\n',
            f"    amount = order.quantity * order.price_{n % 5}\n",
            "    if amount <= 0:\n",
            f"        raise ValueError('order {n} has no amount')\n",
            "    return round(amount * (1 + rate / 100), 2)\n",
            "\n",
        ]
        n += 1
    return "".join(out[:lines])


def grounded(tokens: int, rounds: int) -> None:
    """An edit answer grounded in a 2,000-line file: building and compiling its grammar, and sampling under it."""
    text = _module(2000)
    builds = []
    for _ in range(5):
        start = time.perf_counter()
        grammar = edits_grammar({"shop/orders.py": text}, [])
        builds.append((time.perf_counter() - start) * 1000)
    line("grounded_grammar_build_ms", min(builds))
    shown = "".join(text.splitlines(keepends=True)[:300])
    user = f"Current content of shop/orders.py (lines 1-300 of 2000):\n```\n{shown}```\nMake total_3 round to 3 places."
    with ModelManager(n_ctx=EDIT_CTX) as manager:
        backend = LlamaBackend(describe(embedded_model_path(), "default"), manager)
        llm = manager.acquire(backend.record).llm
        start = time.perf_counter()
        rules = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar.encode(), b"root")
        line("grounded_grammar_compile_ms", (time.perf_counter() - start) * 1000)
        llama_cpp.llama_sampler_free(rules)
        plain, bound = [], []
        for _ in range(rounds):
            base = CompletionRequest(system=SYSTEM, user=user, max_tokens=tokens, json_schema=edits_schema([]))
            a = backend.complete(base)
            b = backend.complete(replace(base, grammar=grammar))
            plain.append(a.seconds / max(a.tokens_out, 1))
            bound.append(b.seconds / max(b.tokens_out, 1))
    line("grounded_over_schema", min(bound) / min(plain))


def edit_lookup(rounds: int) -> None:
    """Tokens/s of a search/replace answer over a 300-line file, with and without prompt-lookup drafts.

    The answer (a block copied from the file, and its replacement) is the one a coder gives; the prompt
    shows it to the model, which copies it as a coder copies the file, and the grammar holds the model to
    it, so both runs decode the same tokens and only the drafts differ (when the model's own choice
    differed, the grammar's redraw over the whole vocabulary would cost more than decoding).
    """
    text = _module(300)
    lines = text.splitlines(keepends=True)
    search = "".join(lines[100:130])
    answer = json.dumps(
        {
            "summary": "Round the totals to three places.",
            "edits": [{"path": "shop/orders.py", "search": search, "replace": search.replace(", 2)", ", 3)")}],
        }
    )
    grammar = f"root ::= {literal(answer)}\n"
    lookup = load_cards()["coder"].card.sampling.lookup or 8
    user = (
        f"Current content of shop/orders.py:\n```\n{text}```\nRound the totals in lines 101-130 to three places.\n"
        f"Answer with exactly this JSON:\n{answer}"
    )
    with ModelManager(n_ctx=EDIT_CTX) as manager:
        backend = LlamaBackend(describe(embedded_model_path(), "default"), manager)
        base = CompletionRequest(system=SYSTEM, user=user, max_tokens=2048, grammar=grammar)
        backend.complete(replace(base, max_tokens=1))  # the prompt in the KV cache for both
        plain, drafted = [], []
        for _ in range(rounds):
            a = backend.complete(base)
            b = backend.complete(replace(base, lookup=lookup))
            assert a.text == b.text == answer, "drafts change the speed, never the answer"
            plain.append(a.tokens_out / a.seconds)
            drafted.append(b.tokens_out / b.seconds)
    line("edit_tokens_per_s", max(plain))
    line("edit_lookup_tokens_per_s", max(drafted))
    line("lookup_speedup", max(drafted) / max(plain))


SECTIONS = ("throughput", "threads", "kv", "prefix", "switch", "constrained", "grounded", "lookup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if "throughput" in only:
        throughput(args.tokens, args.rounds)
    if "threads" in only:
        threads(args.tokens, args.rounds)
    if "kv" in only:
        kv_types(args.tokens, args.rounds)
    if "prefix" in only:
        prefix_reuse()
    if "switch" in only:
        role_switch(args.rounds)
    if "constrained" in only:
        constrained(args.tokens, args.rounds)
    if "grounded" in only:
        grounded(args.tokens, args.rounds)
    if "lookup" in only:
        edit_lookup(args.rounds)


if __name__ == "__main__":
    main()
