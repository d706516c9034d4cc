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
  grammar_build_ms_2000_lines  building the edit grammar (search texts: runs of whole lines) of a 2,000-line file
  grounded_over_schema       seconds per token with that grammar / with the plain edits JSON schema (target <= 1.2)
  lookup_{off,on}_tokens_per_s  a search/replace answer over a 300-line file shown in the prompt, without and
                             with prompt-lookup drafts (greedy, 8 tokens drafted)
  lookup_speedup             on / off (target >= 1.5)
Usage: python bench/models.py [--tokens N] [--rounds R] [--only SECTION,...]
"""

from __future__ import annotations

import argparse
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

from orchestrator.config import ModelsConfig
from orchestrator.errors import ConvergeError
from orchestrator.models.backends import CompletionRequest
from orchestrator.models.gguf import read_gguf
from orchestrator.models.llama import LlamaBackend, ModelManager, quiet_stderr
from orchestrator.models.registry import describe, embedded_model_path
from orchestrator.models.threads import decide, usable_cores
from orchestrator.sandbox.factory import open_sandbox
from orchestrator.store.setup import add_repo, init_workspace

N_CTX = 4096
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


def python_file(lines: int) -> str:
    """A plausible Python module of ``lines`` lines: classes with methods, functions, docstrings."""
    out = ['"""A generated module."""', "", "import math", ""]
    n = 0
    while len(out) < lines:
        out += [
            "",
            f"def compute_{n}(values: list[float], scale: float = {n}.5) -> float:",
            f'    """Scaled sum number {n} of ``values``."""',
            "    total = 0.0",
            "    for value in values:",
            f"        total += math.sqrt(abs(value)) * scale + {n}",
            "    return total",
        ]
        n += 1
    return "\n".join(out[:lines]) + "\n"


def grounded(tokens: int, rounds: int) -> None:
    """The edit grammar of a 2,000-line file: build time, and decoding with it against the plain schema."""
    from orchestrator.agents.grounding import edits_grammar, edits_schema  # noqa: PLC0415  bench section only

    text = python_file(2000)
    builds = []
    for _ in range(5):
        started = time.perf_counter()
        grammar = edits_grammar({"pkg/big.py": text}, [])
        builds.append(time.perf_counter() - started)
    line("grammar_build_ms_2000_lines", statistics.median(builds) * 1000)
    user = "In pkg/big.py, rename compute_3 to compute_three. Answer with one JSON object: summary and edits."
    with ModelManager(n_ctx=N_CTX) as manager:
        backend = LlamaBackend(describe(embedded_model_path(), "default"), manager)
        plain, bound = [], []
        for _ in range(rounds):
            base = CompletionRequest(system=SYSTEM, user=user, max_tokens=tokens, json_schema=edits_schema([]))
            a = backend.complete(base)
            b = backend.complete(replace(base, grammar=grammar))
            plain.append(a.seconds / max(a.tokens_out, 1))
            bound.append(b.seconds / max(b.tokens_out, 1))
    line("grounded_s_per_token", min(bound))
    line("schema_s_per_token", min(plain))
    line("grounded_over_schema", min(bound) / min(plain))


def lookup(tokens: int, rounds: int) -> None:
    """A search/replace answer that copies the file, without and with prompt-lookup drafts."""
    from orchestrator.agents.grounding import edits_grammar  # noqa: PLC0415  bench section only

    text = python_file(300)
    grammar = edits_grammar({"pkg/mod.py": text}, [])
    user = (
        f"Current content of pkg/mod.py:\n```\n{text}```\n"
        "Add a docstring line to compute_20: search for its def line and the lines after it, and replace them "
        "with the same lines plus the docstring. Answer with one JSON object: summary and edits."
    )
    with ModelManager(n_ctx=N_CTX * 2) as manager:
        backend = LlamaBackend(describe(embedded_model_path(), "default"), manager)
        rates: dict[int, list[float]] = {0: [], 8: []}
        for _ in range(rounds):
            for drafts in (0, 8):
                request = CompletionRequest(
                    system=SYSTEM, user=user, max_tokens=tokens * 4, grammar=grammar, lookup=drafts
                )
                backend.complete(request)  # the prompt is evaluated once; the timed call reuses it
                done = backend.complete(request)
                rates[drafts].append(done.tokens_out / done.seconds)
    line("lookup_off_tokens_per_s", max(rates[0]))
    line("lookup_on_tokens_per_s", max(rates[8]))
    line("lookup_speedup", max(rates[8]) / max(rates[0]))


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
        lookup(args.tokens, args.rounds)


if __name__ == "__main__":
    main()
