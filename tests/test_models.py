"""Local models: GGUF registry, roles, backends (llama.cpp, OpenAI endpoint, replay), residency, structured output."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from pydantic import BaseModel, Field

from orchestrator.errors import ModelError, UsageError
from orchestrator.models import runtime
from orchestrator.models.backends import CallLog, Completion, CompletionRequest, ReplayBackend
from orchestrator.models.gguf import read_gguf
from orchestrator.models.llama import LlamaBackend, ModelManager
from orchestrator.models.openai import OpenAIBackend
from orchestrator.models.registry import embedded_model_path
from orchestrator.store.storage import atomic_write
from orchestrator.store.workspace import Workspace
from tests.conftest import converge

N_CTX = 1024
SMOL = embedded_model_path()


class Verdict(BaseModel):
    """A tiny structured answer."""

    approve: bool
    reason: str = Field(max_length=40)


# A stable part long enough that evaluating it costs clearly more than restoring it.
REPO_MAP = "\n".join(f"src/pkg/module_{i}.py: def function_{i}(x: int) -> int  # returns x + {i}" for i in range(5))


@pytest.fixture(scope="module")
def smol_record(tmp_path_factory: pytest.TempPathFactory) -> runtime.ModelRecord:
    ws = Workspace(tmp_path_factory.mktemp("reg"))
    (ws.state / "locks").mkdir(parents=True)
    return runtime.get_model(ws, runtime.DEFAULT_MODEL)


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelManager]:
    with ModelManager(n_ctx=N_CTX, cache_dir=tmp_path_factory.mktemp("prompt-cache")) as mgr:
        yield mgr


@pytest.fixture(scope="module")
def smol(smol_record: runtime.ModelRecord, manager: ModelManager) -> LlamaBackend:
    backend = LlamaBackend(smol_record, manager)
    manager.acquire(smol_record)
    return backend


# --- GGUF header -------------------------------------------------------------------------


def test_gguf_header_of_the_embedded_model() -> None:
    info = read_gguf(SMOL)
    assert info.architecture == "llama"
    assert info.quantisation == "Q4_1"
    assert info.context_length == 8192
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    # 30 layers * (3 kv heads * 64) * 2 (k and v) * 2 bytes
    assert info.kv_cache_bytes(1) == 30 * 192 * 2 * 2
    assert info.memory_estimate(1024) == info.size + 1024 * info.kv_cache_bytes(1)


def test_missing_non_gguf_and_truncated_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"missing\.gguf: model file not found"):
        read_gguf(tmp_path / "missing.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model\n")
    with pytest.raises(ModelError, match=r"notes\.gguf: not a GGUF model file"):
        read_gguf(text)
    data = SMOL.read_bytes()
    head_cut = tmp_path / "head.gguf"
    head_cut.write_bytes(data[:4096])
    with pytest.raises(ModelError, match=r"head\.gguf: truncated GGUF file"):
        read_gguf(head_cut)
    tail_cut = tmp_path / "tail.gguf"
    tail_cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelError, match=r"tail\.gguf: truncated GGUF file"):
        read_gguf(tail_cut)


# --- registry and roles ------------------------------------------------------------------


def test_default_is_registered_without_download_and_roles_resolve(ws: Workspace) -> None:
    registry = runtime.load_registry(ws)
    default = registry.models["default"]
    assert default.builtin and Path(default.path) == SMOL
    assert default.sha256 == runtime.model_digest(ws, "coder")  # unbound role -> default
    assert json.loads((ws.state / "models.json").read_text())["models"]["default"]["quantisation"] == "Q4_1"

    other = ws.root / "other.gguf"
    shutil.copyfile(SMOL, other)
    record = runtime.add_model(ws, other, "small-coder")
    assert record.sha256 == default.sha256 and record.architecture == "llama"
    assert runtime.use_model(ws, "small-coder", "coder") == "small-coder"
    assert runtime.role_binding(ws, "coder") == "small-coder"
    assert runtime.role_binding(ws, "planner") == "default"
    backend = runtime.backend_for_role(ws, "coder")
    assert backend.identity.name == "small-coder" and backend.identity.kind == "llama"

    with pytest.raises(UsageError, match="unknown model 'nope'"):
        runtime.use_model(ws, "nope", "reviewer")
    runtime.use_model(ws, "openai:http://127.0.0.1:9/v1", "reviewer")
    assert runtime.backend_for_role(ws, "reviewer").identity.kind == "openai"


def test_converge_toml_roles_apply_under_registry_bindings(ws: Workspace) -> None:
    config = ws.state / "converge.toml"
    config.write_text(config.read_text() + '\n[models]\nroles = { planner = "planner-model" }\n')
    assert runtime.role_binding(ws, "planner") == "planner-model"
    with pytest.raises(UsageError, match="unknown model 'planner-model'"):
        runtime.backend_for_role(ws, "planner")
    runtime.use_model(ws, "default", "planner")
    assert runtime.role_binding(ws, "planner") == "default"


# --- replay and structured output (deterministic control flow) ----------------------------


def _replay_file(path: Path, entries: list[dict[str, object]]) -> Path:
    atomic_write(path, "".join(json.dumps(e) + "\n" for e in entries))
    return path


def test_replay_answers_by_digest_script_and_raises_on_cue(tmp_path: Path) -> None:
    asked = CompletionRequest(system="s", user="plan it")
    broken = CompletionRequest(system="s", user="break")
    path = _replay_file(
        tmp_path / "calls.jsonl",
        [
            {"digest": asked.digest(), "text": "the plan", "tokens_in": 5, "tokens_out": 2, "model_sha256": "abc"},
            {"digest": broken.digest(), "error": "model crashed on cue"},
            {"text": "scripted answer"},
        ],
    )
    replay = ReplayBackend(path)
    assert replay.identity.sha256 == "abc"
    assert replay.complete(asked).text == "the plan"
    assert replay.complete(asked).tokens_in == 5  # the same prompt, the same answer
    with pytest.raises(ModelError, match="model crashed on cue"):
        replay.complete(broken)
    assert replay.complete(CompletionRequest(system="s", user="anything")).text == "scripted answer"
    with pytest.raises(ModelError, match=r"calls\.jsonl: no recorded answer for prompt digest"):
        replay.complete(CompletionRequest(system="s", user="unrecorded"))


def test_structured_output_retries_with_the_error_fed_back(tmp_path: Path) -> None:
    request = CompletionRequest(system="judge", user="is it fine?")
    constrained = CompletionRequest(system="judge", user="is it fine?", json_schema=Verdict.model_json_schema())
    path = _replay_file(
        tmp_path / "calls.jsonl",
        [
            {"digest": constrained.digest(), "text": '{"approve": "maybe"}'},
            {"text": '{"approve": true, "reason": "tests pass"}'},  # the retry, whatever its digest
        ],
    )
    seen: list[CompletionRequest] = []

    class Watching(ReplayBackend):
        def complete(self, request: CompletionRequest) -> Completion:
            seen.append(request)
            return super().complete(request)

    verdict, _ = runtime.complete_structured(Watching(path), request, Verdict)
    assert verdict == Verdict(approve=True, reason="tests pass")
    assert seen[0].digest() == constrained.digest()
    assert seen[1].followups[0].content == '{"approve": "maybe"}'
    assert "approve: Input should be a valid boolean" in seen[1].followups[1].content


def test_structured_output_gives_up_with_the_raw_answer_logged(tmp_path: Path) -> None:
    path = _replay_file(tmp_path / "calls.jsonl", [{"text": '{"approve": tru', "finish_reason": "length"}] * 3)
    log = CallLog(tmp_path / "run.jsonl")
    request = CompletionRequest(system="judge", user="is it fine?", max_tokens=8)
    with pytest.raises(ModelError, match=r"after 3 attempts: the answer was cut off at max_tokens=8.*run\.jsonl"):
        runtime.complete_structured(ReplayBackend(path), request, Verdict, retries=2, log=log)
    failure = json.loads(log.path.read_text().splitlines()[-1])
    assert failure["kind"] == "structured_failure" and failure["raw"] == '{"approve": tru'

    # Through a recorded backend the failure lands in the same log as the calls, without being told.
    recorded = runtime.Recorded(ReplayBackend(path), CallLog(tmp_path / "calls-of-run.jsonl"))
    with pytest.raises(ModelError, match=r"calls-of-run\.jsonl"):
        runtime.complete_structured(recorded, request, Verdict, retries=1)
    kinds = [json.loads(x).get("kind", "call") for x in recorded.log.path.read_text().splitlines()]
    assert kinds == ["call", "call", "structured_failure"]
    assert ReplayBackend(recorded.log.path).script == []  # reports are not answers


# --- the real model: llama.cpp in-process --------------------------------------------------


@pytest.mark.model
def test_chat_with_the_embedded_model(smol: LlamaBackend) -> None:
    done = smol.complete(CompletionRequest(system="You are terse.", user="Say hello.", max_tokens=12))
    assert done.text.strip()
    assert 10 < done.tokens_in < 60 and 0 < done.tokens_out <= 12


NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


@pytest.mark.model
def test_a_template_without_system_role_gets_the_system_prompt_folded_in(
    smol_record: runtime.ModelRecord, manager: ModelManager
) -> None:
    strict = smol_record.model_copy(update={"name": "no-system", "chat_template": NO_SYSTEM_TEMPLATE})
    backend = LlamaBackend(strict, manager)
    resident = manager.acquire(strict)
    request = CompletionRequest(system="Answer in French.", user="Say hello.", max_tokens=4)
    prompt, _ = backend._tokens(resident, request)
    text = resident.llm.detokenize(prompt, special=True).decode()
    assert text.startswith("<|im_start|>user\nAnswer in French.\n\nSay hello.<|im_end|>")
    assert backend.complete(request).tokens_out > 0
    manager.evict("no-system")


@pytest.mark.model
def test_schema_constrained_output_validates(smol: LlamaBackend, tmp_path: Path) -> None:
    request = CompletionRequest(system="You review code changes.", user="The tests pass. Approve?", max_tokens=48)
    verdict, completion = runtime.complete_structured(smol, request, Verdict, log=CallLog(tmp_path / "log.jsonl"))
    assert isinstance(verdict.approve, bool)
    assert Verdict.model_validate_json(completion.text) == verdict


@pytest.mark.model
def test_sampled_constrained_output_is_valid(smol: LlamaBackend) -> None:
    # Sampling draws without the grammar first and redraws only when the grammar rejects: still always valid.
    for seed in (1, 2, 3):
        request = CompletionRequest(
            system="You review code.", user="Approve?", max_tokens=96, temperature=0.9, seed=seed
        )
        verdict, done = runtime.complete_structured(smol, request, Verdict, retries=0)
        assert done.finish_reason == "stop" and Verdict.model_validate_json(done.text) == verdict


@pytest.mark.model
def test_prefix_state_is_reused_in_memory_and_from_disk(
    smol: LlamaBackend, smol_record: runtime.ModelRecord, manager: ModelManager
) -> None:
    def ask(backend: LlamaBackend, user: str) -> Completion:
        return backend.complete(
            CompletionRequest(system="You know this repo.", prefix=REPO_MAP, user=user, max_tokens=1)
        )

    smol.complete(CompletionRequest(system="Something else entirely.", user="hi", max_tokens=1))
    first = ask(smol, "Which module defines function_7?")
    second = ask(smol, "Which module defines function_9?")
    assert first.prefix_reused == 0 and first.tokens_in > 120
    assert second.prefix_reused > 120
    assert second.seconds < first.seconds / 2

    smol.complete(CompletionRequest(system="Something else entirely.", user="hi", max_tokens=1))
    assert ask(smol, "And function_3?").prefix_reused > 120  # restored from memory after another prompt

    # A new process: a fresh manager over the same cache directory restores the prefix from disk.
    with ModelManager(n_ctx=N_CTX, cache_dir=manager.cache_dir) as fresh:
        assert list((manager.cache_dir or Path()).glob("*.state"))
        restarted = ask(LlamaBackend(smol_record, fresh), "Which module defines function_5?")
    assert restarted.prefix_reused > 120


@pytest.mark.model
def test_models_are_refused_before_loading_and_evicted_least_recent_first(
    smol_record: runtime.ModelRecord, tmp_path: Path
) -> None:
    estimate = ModelManager(n_ctx=N_CTX).placement(smol_record).ram
    with ModelManager(budget=estimate // 2, n_ctx=N_CTX) as tiny:
        with pytest.raises(
            ModelError, match=r"needs about \d+ MiB of RAM \(weights \d+ MiB \+ KV cache .*smaller quantisation"
        ):
            tiny.acquire(smol_record)
        assert tiny.resident() == []
    twin = smol_record.model_copy(update={"name": "twin"})
    with ModelManager(budget=int(estimate * 1.5), n_ctx=N_CTX) as one_fits:
        first = one_fits.acquire(smol_record)
        one_fits.acquire(twin)
        assert [k.split(":")[0] for k in one_fits.resident()] == ["twin"]
        assert one_fits.acquire(twin).llm is not first.llm
    with ModelManager(budget=estimate * 3, n_ctx=N_CTX) as both_fit:
        a = both_fit.acquire(smol_record)
        both_fit.acquire(twin)
        start = time.perf_counter()
        assert both_fit.acquire(smol_record) is a  # switching to a resident model costs nothing
        assert time.perf_counter() - start < 0.05
        assert [k.split(":")[0] for k in both_fit.resident()] == ["twin", "default"]


@pytest.mark.model
def test_every_real_call_is_recorded_and_replays_exactly(smol: LlamaBackend, tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    recorded = runtime.Recorded(smol, log)
    request = CompletionRequest(system="You are terse.", user="Name a colour.", max_tokens=6, seed=7)
    live = recorded.complete(request)
    entry = json.loads(log.path.read_text().splitlines()[0])
    assert entry["digest"] == request.digest() and entry["model_sha256"] == smol.record.sha256
    assert entry["params"] == {"temperature": 0.0, "max_tokens": 6, "seed": 7}
    assert entry["tokens_out"] == live.tokens_out and entry["text"] == live.text
    replayed = ReplayBackend(log.path).complete(request)
    assert (replayed.text, replayed.tokens_in, replayed.tokens_out) == (live.text, live.tokens_in, live.tokens_out)


# --- OpenAI-compatible endpoint: llama.cpp's own server ------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(SMOL), "--n_ctx", str(N_CTX)]
    with log.open("wb") as sink:
        proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(port)], stdout=sink, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"llama_cpp.server did not start: {log.read_text()[-500:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["llama", "openai", "replay"])
def any_backend(request: pytest.FixtureRequest, smol: LlamaBackend, tmp_path: Path) -> runtime.ModelBackend:
    """Each implementation of the contract; replay answers from what the real model recorded."""
    if request.param == "llama":
        return smol
    if request.param == "openai":
        return OpenAIBackend(request.getfixturevalue("server_url"), timeout=60)
    log = CallLog(tmp_path / "recorded.jsonl")
    recorder = runtime.Recorded(smol, log)
    for req in CONTRACT_REQUESTS:
        recorder.complete(req)
    return ReplayBackend(log.path)


CONTRACT_REQUESTS = [
    CompletionRequest(system="You are terse.", user="Name a fruit.", max_tokens=8),
    CompletionRequest(
        system="You review code.", user="Approve?", max_tokens=64, json_schema=Verdict.model_json_schema()
    ),
]


@pytest.mark.model
def test_backend_contract(any_backend: runtime.ModelBackend) -> None:
    plain, structured = (any_backend.complete(req) for req in CONTRACT_REQUESTS)
    assert plain.text.strip() and 0 < plain.tokens_out <= 8 and plain.tokens_in > 0
    assert plain.finish_reason in ("stop", "length") and plain.seconds >= 0
    Verdict.model_validate_json(structured.text)
    assert any_backend.identity.kind in ("llama", "openai", "replay")


def test_unreachable_endpoint_is_a_model_error() -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{_free_port()}", model="x", timeout=2)
    with pytest.raises(ModelError, match=r"127\.0\.0\.1:\d+/v1/chat/completions: endpoint not reachable"):
        backend.complete(CompletionRequest(system="s", user="u"))


# --- the command line ---------------------------------------------------------------------


def test_cli_add_list_use(ws: Workspace, tmp_path: Path) -> None:
    env = {"CONVERGE_WORKSPACE": str(ws.root)}
    bad = tmp_path / "fake.gguf"
    bad.write_text("not a model")
    proc = converge("model", "add", str(bad), "--name", "fake", env=env)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"converge: error: {bad}: not a GGUF model file (bad magic); give a .gguf file"
    )
    proc = converge("model", "add", str(tmp_path / "gone.gguf"), "--name", "gone", env=env)
    assert proc.returncode == 2 and "gone.gguf: model file not found" in proc.stderr

    copy = tmp_path / "coder.gguf"
    shutil.copyfile(SMOL, copy)
    added = json.loads(converge("model", "add", str(copy), "--name", "coder-q4", "--json", env=env, check=True).stdout)
    assert added["quantisation"] == "Q4_1" and added["context_length"] == 8192
    converge("model", "use", "coder-q4", "--role", "coder", env=env, check=True)
    listing = json.loads(converge("model", "list", "--json", env=env, check=True).stdout)
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {"default", "coder-q4"}
    assert by_name["coder-q4"]["roles"] == ["coder"] and by_name["default"]["roles"] == ["planner", "reviewer"]
    assert listing["roles"] == {"coder": "coder-q4", "planner": "default", "reviewer": "default"}
    proc = converge("model", "use", "ghost", "--role", "coder", env=env)
    assert proc.returncode == 2 and "unknown model 'ghost'" in proc.stderr


@pytest.mark.model
def test_cli_try_with_a_schema_prints_valid_json(ws: Workspace, tmp_path: Path) -> None:

    schema = {
        "type": "object",
        "properties": {"language": {"type": "string", "maxLength": 20}, "year": {"type": "integer"}},
        "required": ["language", "year"],
    }
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))
    env = {"CONVERGE_WORKSPACE": str(ws.root), "CONVERGE_MODELS__CONTEXT_LENGTH": str(N_CTX)}
    proc = converge(
        "model", "try", "default", "--prompt", "Which language is Python and when was it created?",
        "--schema", str(schema_file), "--max-tokens", "48", "--json", env=env, check=True,
    )  # fmt: skip
    doc = json.loads(proc.stdout)
    jsonschema.validate(json.loads(doc["text"]), schema)
    assert doc["json"] == json.loads(doc["text"]) and doc["model_sha256"] == runtime.get_model(ws, "default").sha256
    calls = (ws.state / "logs" / "model-calls.jsonl").read_text().splitlines()
    assert json.loads(calls[-1])["tokens_out"] == doc["tokens_out"]

    proc = converge(
        "model", "try", "default", "--prompt", "hi", env={**env, "CONVERGE_MODELS__MEMORY_BUDGET": "50000000"}
    )
    assert proc.returncode == 2
    assert (
        "needs about 222 MiB of RAM (weights 92 MiB + KV cache 22 MiB (f16) for 1024 tokens + compute 105 MiB)"
        in proc.stderr
    )
    assert "more than the memory budget of 48 MiB and VRAM budget of 0 MiB" in proc.stderr
    assert "a shorter context ([models.settings.default] context_length" in proc.stderr

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(SMOL.read_bytes()[:3_000_000])
    registry = json.loads((ws.state / "models.json").read_text())
    registry["models"]["broken"] = {
        **registry["models"]["default"],
        "name": "broken",
        "path": str(broken),
        "size": 3_000_000,
        "builtin": False,
    }
    (ws.state / "models.json").write_text(json.dumps(registry))
    proc = converge("model", "try", "broken", "--prompt", "hi", env=env)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"converge: error: {broken}: truncated GGUF file (3000000 bytes, tensors need ")
    assert line.endswith("); download it again")
