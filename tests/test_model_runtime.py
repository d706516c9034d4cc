"""The model runtime on a real machine: settings per model, VRAM/RAM placement from GGUF headers with a fake
device, threads fitted to the free cores, KV cache types, NUMA and mlock, the prompt cache's size, the window."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp
import pytest

from orchestrator.config import ModelsConfig, load_config
from orchestrator.errors import ConfigError, ModelError
from orchestrator.models import memory, threads
from orchestrator.models.backends import CompletionRequest
from orchestrator.models.gguf import read_gguf
from orchestrator.models.llama import LlamaBackend, ModelManager
from orchestrator.models.placement import Device, compute_bytes, place
from orchestrator.models.promptcache import CacheUsage, PromptCache, usage
from orchestrator.models.registry import describe, embedded_model_path
from orchestrator.models.window import fit
from orchestrator.store.workspace import Workspace
from tests.conftest import converge
from tests.ggufwrite import Shape, write_gguf

SMOL = embedded_model_path()
GiB, MiB = 2**30, 2**20
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A 70B-shaped GGUF (80 layers, Q4_K, 40 GB as a sparse file)."""
    path = tmp_path_factory.mktemp("big") / "synthetic-70b.gguf"
    return path, write_gguf(path, Shape())


# --- settings ----------------------------------------------------------------------------


def test_a_model_s_own_settings_win_over_models_defaults_and_env_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "converge.toml").write_text(
        '[models]\nthreads = 3\nkv_type = "q8_0"\n\n[models.settings.coder]\nthreads = 1\ngpu_layers = "all"\n'
    )
    config = load_config(tmp_path, environ={"CONVERGE_MODELS__THREADS_BATCH": "2"}).models
    coder, other = config.settings_for("coder"), config.settings_for("planner")
    assert (coder.threads, coder.threads_batch, coder.gpu_layers, coder.kv_type) == (1, 2, "all", "q8_0")
    assert (other.threads, other.gpu_layers, other.mmap, other.numa) == (3, "auto", True, "off")
    assert coder.flash_attn, "a quantised KV cache turns flash attention on"
    bad = ModelsConfig.model_validate({"settings": {"coder": {"kv_type": "q4_0", "flash_attn": False}}})
    with pytest.raises(ConfigError, match=r"models\.settings\.coder: kv_type = 'q4_0' needs flash_attn = true"):
        bad.settings_for("coder")
    (tmp_path / "converge.toml").write_text("[models]\nthreads = 0\n")
    with pytest.raises(ConfigError, match=r"converge\.toml: models\.threads"):
        load_config(tmp_path, environ={})


# --- placement ---------------------------------------------------------------------------


def test_kv_cache_bytes_match_llama_cpp_s_own_report() -> None:
    info = read_gguf(SMOL)
    # llama.cpp, loading this file with n_ctx=4096: "KV buffer size = 90.00 MiB" (f16), "47.81 MiB" (q8_0)
    assert info.kv_cache_bytes(4096, "f16") == 90 * MiB
    assert round(info.kv_cache_bytes(4096, "q8_0") / MiB, 2) == 47.81
    assert info.kv_cache_bytes(8192, "q4_0") < info.kv_cache_bytes(8192, "q8_0") < info.kv_cache_bytes(8192)
    # and "CPU compute buffer size = 99.38 MiB": the estimate stays above it, by little
    assert 99.38 * MiB <= compute_bytes(info, 4096, flash_attn=False) <= 110 * MiB


def test_layers_fit_the_vram_budget_from_the_smol_header() -> None:
    info = read_gguf(SMOL)
    layers = info.layer_bytes()
    assert len(layers) == 30 and sum(layers) + info.tensor_bytes("token_embd.weight") < info.size
    settings = ModelsConfig(context_length=1024).settings_for("smol")
    kv_layer = info.kv_layer_bytes(1024)
    compute = compute_bytes(info, 1024, flash_attn=False)
    for k in (1, 10, 30):
        budget = sum(layers[-k:]) + k * kv_layer + compute
        assert place(info, settings, 1024, budget).gpu_layers == k
        assert place(info, settings, 1024, budget - 1).gpu_layers == k - 1
    everything = place(info, settings, 1024, 10 * GiB)
    assert everything.gpu_layers == 31 and everything.split().startswith("GPU 31/31 layers")
    assert place(info, settings, 1024, 0).split().startswith("RAM ")


def test_a_70b_is_split_between_an_8_gb_gpu_and_ram_or_refused_before_loading(
    big: tuple[Path, dict[str, int]],
) -> None:
    path, sizes = big
    shape = Shape()
    layer = sum(v for k, v in sizes.items() if k.startswith("blk.0."))
    kv_layer = 4096 * (shape.n_embd // shape.n_head) * shape.n_head_kv * 2 * 2  # k and v, f16
    logits, scores = 4 * 512 * shape.n_vocab, 4 * 512 * 4096 * shape.n_head
    compute = max(logits, scores) + 4 * 512 * (3 * shape.n_embd + 2 * shape.n_ff)
    gpu = Device("fake 8 GB", total=8 * GiB, free=8 * GiB)
    expected = (8 * GiB - compute) // (layer + kv_layer)
    with ModelManager(budget=48 * GiB, n_ctx=4096, devices=[gpu]) as manager:
        placement = manager.place("llama70b", read_gguf(path))
    assert placement.gpu_layers == expected == 15
    assert placement.vram == expected * (layer + kv_layer) + compute <= 8 * GiB
    assert placement.ram == path.stat().st_size - expected * layer + (80 - expected) * kv_layer + compute
    q8 = ModelsConfig(context_length=4096, kv_type="q8_0")
    with ModelManager(budget=48 * GiB, config=q8, devices=[gpu]) as manager:
        assert manager.place("llama70b", read_gguf(path)).gpu_layers > expected, "a smaller KV cache fits more"
    with (
        ModelManager(budget=16 * GiB, n_ctx=4096, devices=[gpu]) as manager,
        pytest.raises(ModelError, match=r"needs about 3\d\.\d\d GiB of RAM .*GPU 15/81 layers.*more than the memory"),
    ):
        manager.place("llama70b", read_gguf(path))
    all_layers = ModelsConfig(context_length=4096, gpu_layers="all")
    with (
        ModelManager(budget=48 * GiB, config=all_layers, devices=[gpu]) as manager,
        pytest.raises(ModelError, match=r"gpu_layers = 'all' needs 3\d\.\d\d GiB of VRAM .*set gpu_layers = 15"),
    ):
        manager.place("llama70b", read_gguf(path))
    with (
        ModelManager(config=ModelsConfig(gpu_layers=20), devices=[]) as manager,
        pytest.raises(ModelError, match=r"gpu_layers = 20 but no GPU is available .*README"),
    ):
        manager.place("llama70b", read_gguf(path))


def test_cli_add_shows_the_split_and_refuses_a_model_that_fits_nowhere(
    ws: Workspace, big: tuple[Path, dict[str, int]]
) -> None:
    env = {"CONVERGE_WORKSPACE": str(ws.root), "CONVERGE_MODELS__VRAM_BUDGET": str(8 * GiB)}
    proc = converge("model", "add", str(big[0]), "--name", "llama70b", env=env)
    assert proc.returncode == 2 and "more than the memory budget" in proc.stderr
    registry = ws.state / "models.json"
    assert not registry.exists() or "llama70b" not in registry.read_text(), "refused before registering"
    added = converge("model", "add", str(SMOL), "--name", "smol", "--json", env=env, check=True)
    doc = json.loads(added.stdout)
    assert doc["window"] == 4096 and doc["placement"]["gpu_layers"] == 31 and doc["placement"]["vram"] > 0
    listing = json.loads(converge("model", "list", "--json", env=env, check=True).stdout)
    smol = next(m for m in listing["models"] if m["name"] == "smol")
    assert (smol["window"], smol["context_length"]) == (4096, 8192)
    assert smol["placement"] == doc["placement"]
    text = converge("model", "list", env={**env, "COLUMNS": "200"}, check=True).stdout
    assert "GPU 31/31 layers" in text and "8192" in text


@pytest.mark.model
def test_a_model_placed_on_a_fake_gpu_loads_and_answers(tmp_path: Path) -> None:
    record = describe(SMOL, "smol")
    gpu = Device("fake", total=150 * MiB, free=150 * MiB)
    with ModelManager(n_ctx=1024, devices=[gpu]) as manager:
        resident = manager.acquire(record)
        assert 0 < resident.placement.gpu_layers < 31 and resident.placement.vram <= 150 * MiB
        done = LlamaBackend(record, manager).complete(CompletionRequest(system="Be brief.", user="Hi", max_tokens=4))
    assert done.tokens_out > 0


# --- threads -----------------------------------------------------------------------------


def _fake_proc(root: Path, running: int, own_states: str) -> Path:
    (root / "self" / "task").mkdir(parents=True)
    (root / "stat").write_text(f"cpu  1 2 3\nprocs_running {running}\nprocs_blocked 0\n")
    for i, state in enumerate(own_states):
        (root / "self" / "task" / str(i)).mkdir()
        (root / "self" / "task" / str(i) / "stat").write_text(f"{i} (python (x)) {state} 1 2 3\n")
    return root


def test_auto_threads_leave_the_cores_others_use(tmp_path: Path) -> None:
    assert [threads.fit_threads(2, busy) for busy in (0.0, 0.2, 0.6, 1.0, 3.0)] == [2, 2, 1, 1, 1]
    assert threads.fit_threads(16, 4.0) == 12
    # procs_running counts this process's runnable threads too: the reader and a spinning worker
    quiet = _fake_proc(tmp_path / "quiet", running=2, own_states="RRS")
    assert threads.others_busy(quiet, samples=2) == 0.0
    loaded = _fake_proc(tmp_path / "loaded", running=3, own_states="RSS")
    assert threads.others_busy(loaded, samples=2) == 2.0 * min(1.0, threads.usable_cores() / (os.cpu_count() or 1))
    counts = threads.decide(4, "auto", proc=loaded)
    assert counts.threads == 4 and counts.threads_batch == threads.fit_threads(threads.usable_cores(), 2.0)


def test_auto_threads_are_fitted_again_during_a_long_answer() -> None:
    applied: list[threads.ThreadCounts] = []
    refit = threads.Refit("auto", "auto", applied.append, every=16)
    assert not any(refit(None, None) for _ in range(40)), "it never stops generation"
    assert len(applied) == 2 and all(c.threads >= 1 and c.threads == c.threads_batch for c in applied)
    fixed = threads.Refit(2, 4, applied.append)
    assert not fixed.auto and not any(fixed() for _ in range(40)) and len(applied) == 2


def test_a_cpu_bound_process_beside_is_seen() -> None:
    before = threads.others_busy()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        beside = max(threads.others_busy() for _ in range(3))
    finally:
        spinner.kill()
        spinner.wait()
    assert beside >= 0.5, f"a busy loop beside should count (before {before}, beside {beside})"


@pytest.mark.model
def test_threads_and_kv_type_reach_llama_cpp() -> None:
    config = ModelsConfig(context_length=1024, threads=1, threads_batch=2, kv_type="q8_0")
    record = describe(SMOL, "smol")
    with ModelManager(config=config) as manager:
        backend = LlamaBackend(record, manager)
        done = backend.complete(CompletionRequest(system="Be brief.", user="Name a colour.", max_tokens=6))
        resident = manager.acquire(record)
        ctx = resident.llm.ctx
        assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == (1, 2)
        assert resident.placement.kv_bytes == read_gguf(SMOL).kv_cache_bytes(1024, "q8_0")
    assert done.text.strip()


# --- memory tiers ------------------------------------------------------------------------


def test_numa_nodes_are_read_from_sys(tmp_path: Path) -> None:
    for node, cpus, free in ((0, "0-7", 1000), (1, "", 64_000_000)):  # node 1: a CXL card, memory only
        (tmp_path / f"node{node}").mkdir()
        (tmp_path / f"node{node}" / "cpulist").write_text(f"{cpus}\n")
        (tmp_path / f"node{node}" / "meminfo").write_text(
            f"Node {node} MemTotal:  {free * 2} kB\nNode {node} MemFree:  {free} kB\n"
        )
    nodes = memory.numa_nodes(tmp_path)
    assert [(n.node, n.cpus, n.free) for n in nodes] == [(0, "0-7", 1000 * 1024), (1, "", 64_000_000 * 1024)]
    real = memory.numa_nodes()
    assert real and real[0].node == 0 and 0 < real[0].free <= real[0].total
    with (
        pytest.raises(ModelError, match=r"numa = 5: no NUMA node 5 on this machine \(nodes: 0, 1\)"),
        memory.memory_on_node(5, tmp_path),
    ):
        pass


@pytest.mark.model
def test_weights_bound_to_a_node_and_locked_in_ram() -> None:
    record = describe(SMOL, "smol")
    config = ModelsConfig(context_length=512, numa=0, mlock=True)
    locked = memory.locked_now()
    with ModelManager(config=config) as manager:
        resident = manager.acquire(record)
        assert memory.locked_now() - locked >= record.size // 2, "the weights are locked (VmLck)"
        assert LlamaBackend(record, manager).complete(CompletionRequest(system="s", user="Hi", max_tokens=2))
        other = record.model_copy(update={"name": "other"})
        manager.config = manager.config.model_copy(update={"numa": "distribute"})
        with pytest.raises(ModelError, match=r"numa = 'distribute', but this process already runs llama.cpp"):
            manager.acquire(other)
        assert resident.llm is manager.acquire(record).llm


def _without_memlock() -> None:
    """In the child: a 64 KiB RLIMIT_MEMLOCK, and CAP_IPC_LOCK out of the bounding set, so the program it
    runs cannot pass the limit (as for an unprivileged user)."""
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))
    pr_capbset_drop = 24
    if ctypes.CDLL(None, use_errno=True).prctl(pr_capbset_drop, memory.CAP_IPC_LOCK, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_mlock_past_the_limit_is_a_clear_error() -> None:
    code = (
        "from orchestrator.models.memory import ensure_lockable\n"
        "from orchestrator.errors import ModelError\n"
        "try:\n    ensure_lockable(200 * 2**20, \"model 'big'\")\n"
        "except ModelError as exc:\n    print(exc)\n"
    )

    proc = subprocess.run(
        [sys.executable, "-c", code], cwd="/", env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        preexec_fn=_without_memlock, check=True,
    )  # fmt: skip
    assert proc.stdout.startswith("model 'big': mlock needs 200 MiB locked but RLIMIT_MEMLOCK allows 64 KiB; raise it")
    assert "or set mlock = false for this model" in proc.stdout


# --- prompt cache and window -------------------------------------------------------------


def test_prompt_cache_keeps_the_most_recently_used_under_its_size(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path / "prompt-cache", max_bytes=2500)
    paths = [cache.path("a" * 64, 1024, f"k{i}") for i in range(3)]
    for i, path in enumerate(paths[:2]):
        assert cache.put(path, bytes(1000))
        os.utime(path, ns=(i * 10**9, i * 10**9))  # written a second apart
    assert cache.get(paths[0]) is not None  # using the older one makes it the newest
    assert cache.put(paths[2], bytes(1000))
    assert [p.exists() for p in paths] == [True, False, True]
    assert usage(cache.directory) == CacheUsage(files=2, bytes=2000)
    assert not cache.put(cache.path("a" * 64, 1024, "huge"), bytes(3000)), "a state past the limit is not kept"


def test_doctor_shows_numa_nodes_and_the_prompt_cache_and_clean_trims_it(ws: Workspace) -> None:
    cache = ws.cache / "prompt-cache"
    cache.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (cache / f"m-1024-{i}.state").write_bytes(bytes(1000))
    env = {"CONVERGE_MODELS__PROMPT_CACHE_BYTES": "1500"}
    report = json.loads(converge("-w", str(ws.root), "doctor", "--json", env=env).stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["models.prompt_cache"]["status"] == "warning"
    assert checks["models.prompt_cache"]["detail"].startswith("0 MiB in 3 state(s) of 0 MiB")
    assert "free of" in checks["models.numa.node0"]["detail"]
    assert checks["models.threads"]["detail"].endswith(tuple("123456789"))
    report = json.loads(converge("-w", str(ws.root), "doctor", "--json", "--clean", env=env).stdout)
    assert "2 prompt-cache state(s)" in report["cleaned"] and len(list(cache.glob("*.state"))) == 1


def _words(request: CompletionRequest) -> int:
    return sum(len(m.content.split()) for m in request.messages())


def test_a_prompt_past_the_window_loses_the_end_of_its_map_and_says_so() -> None:
    repo_map = "\n".join(f"src/mod_{i}.py: def f_{i}(x)" for i in range(100))
    request = CompletionRequest(system="sys", prefix=repo_map, user="task here", max_tokens=20)
    fitted = fit(request, 200, _words, "model 'm'", "raise it")
    assert _words(fitted.request) + 20 <= 200 < _words(request) + 20
    kept = fitted.request.prefix.splitlines()
    assert kept[:-1] == repo_map.splitlines()[: len(kept) - 1] and fitted.lines_cut == 100 - (len(kept) - 1)
    assert kept[-1] == f"[{fitted.lines_cut} more lines cut to fit the model's context window of 200 tokens]"
    assert fit(request, 10_000, _words, "m", "r").request is request
    with pytest.raises(ModelError, match=r"prompt of \d+ tokens without the repo map \+ 20 to generate exceeds .* 30 "):
        fit(request, 30, _words, "model 'm'", "raise it")


@pytest.mark.model
def test_the_in_process_window_is_the_model_s_and_says_where_to_raise_it() -> None:
    record = describe(SMOL, "smol")
    repo_map = "\n".join(f"src/pkg/module_{i}.py: def function_{i}(x: int) -> int" for i in range(120))
    with ModelManager(n_ctx=512) as manager:
        backend = LlamaBackend(record, manager)
        done = backend.complete(CompletionRequest(system="s", prefix=repo_map, user="Which?", max_tokens=16))
        assert done.lines_cut > 0 and done.tokens_in + 16 <= 512
        with pytest.raises(ModelError) as refused:
            backend.complete(CompletionRequest(system="s", user="word " * 600, max_tokens=16))
    assert "exceeds the context window of 512 tokens of model 'smol'" in str(refused.value)
    assert "raise [models.settings.smol] context_length" in str(refused.value)
    assert "in .converge/converge.toml (now 512; the model was trained for 8192)" in str(refused.value)
