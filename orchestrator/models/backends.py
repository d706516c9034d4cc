"""The model backend contract, the call log, and the replay backend.

One small protocol: ``complete(CompletionRequest) -> Completion``. Implementations:
``LlamaBackend`` (in-process llama.cpp, in ``llama``), ``OpenAIBackend`` (any
OpenAI-compatible endpoint by URL, in ``openai``), ``EndpointPool`` (several of them, in
``pool``) and ``ReplayBackend`` (answers from a recorded JSONL, so a run is reproduced
exactly and control flow is tested without a model). ``Recorded`` wraps a real backend and
appends every call to a JSONL in the very form ``ReplayBackend`` reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from orchestrator.errors import ModelError

BackendKind = Literal["llama", "openai", "replay"]


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    """A model call: the stable part first (system prompt, then ``prefix`` such as a repo map), then the task.

    ``followups`` are later turns (e.g. a rejected answer and the correction asked for). ``grammar``
    (GBNF, see ``models.grammar``) constrains an in-process model more tightly than ``json_schema``,
    which servers decode against; ``lookup`` drafts that many tokens by prompt lookup (0: off).
    """

    system: str
    user: str
    prefix: str = ""
    json_schema: Mapping[str, Any] | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int = 0
    followups: tuple[Message, ...] = ()
    grammar: str | None = None
    lookup: int = 0

    def system_text(self) -> str:
        """The system turn: the system prompt, then the stable prefix."""
        return f"{self.system}\n\n{self.prefix}" if self.prefix else self.system

    def messages(self) -> list[Message]:
        """The conversation as the model sees it, stable part first."""
        return [Message("system", self.system_text()), Message("user", self.user), *self.followups]

    def params(self) -> dict[str, Any]:
        """Sampling parameters, as recorded."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed}

    def digest(self) -> str:
        """sha256 of everything that determines the answer except the model: the key of a recording."""
        doc: dict[str, Any] = {
            "messages": [asdict(m) for m in self.messages()],
            "schema": self.json_schema,
            "params": self.params(),
        }
        if self.grammar is not None:
            doc["grammar"] = self.grammar
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def with_followup(self, answer: str, correction: str) -> CompletionRequest:
        """This request plus the model's previous answer and a correction for it."""
        turns = (Message("assistant", answer), Message("user", correction))
        return replace(self, followups=(*self.followups, *turns))


@dataclass(frozen=True)
class Completion:
    """A model's answer and what it cost."""

    text: str
    tokens_in: int
    tokens_out: int
    seconds: float
    finish_reason: str = "stop"
    prefix_reused: int = field(default=0, compare=False)
    lines_cut: int = field(default=0, compare=False)  # prefix lines cut to fit the context window
    endpoint: str | None = field(default=None, compare=False)  # which server of a pool answered


@dataclass(frozen=True)
class ModelIdentity:
    """Which model answered: named in call logs and attestations."""

    name: str
    sha256: str | None
    kind: BackendKind


class ModelBackend(Protocol):
    """Anything that answers a CompletionRequest."""

    @property
    def identity(self) -> ModelIdentity: ...

    def complete(self, request: CompletionRequest) -> Completion: ...


class CallLog:
    """An append-only JSONL of model calls, readable by ReplayBackend."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry as a single line (one write, so concurrent writers do not interleave)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(dict(entry), sort_keys=True) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)

    def record(
        self,
        identity: ModelIdentity,
        request: CompletionRequest,
        completion: Completion | None,
        error: str | None = None,
    ) -> None:
        """Record one call: prompt digest, model, parameters, tokens, seconds, the answer (or the error)."""
        entry: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "digest": request.digest(),
            "model": identity.name,
            "model_sha256": identity.sha256,
            "backend": identity.kind,
            "params": request.params(),
            "schema": request.json_schema is not None,
            "user": request.user,
        }
        if completion is not None:
            entry.update(
                text=completion.text,
                tokens_in=completion.tokens_in,
                tokens_out=completion.tokens_out,
                seconds=round(completion.seconds, 4),
                finish_reason=completion.finish_reason,
                prefix_reused=completion.prefix_reused,
            )
            if completion.lines_cut:
                entry["lines_cut"] = completion.lines_cut
            if completion.endpoint is not None:
                entry["endpoint"] = completion.endpoint
        if error is not None:
            entry["error"] = error
        self.append(entry)


class Recorded:
    """A backend whose every call is appended to a CallLog."""

    def __init__(self, inner: ModelBackend, log: CallLog) -> None:
        self.inner = inner
        self.log = log

    @property
    def identity(self) -> ModelIdentity:
        return self.inner.identity

    def complete(self, request: CompletionRequest) -> Completion:
        try:
            completion = self.inner.complete(request)
        except ModelError as exc:
            self.log.record(self.identity, request, None, error=str(exc))
            raise
        self.log.record(self.identity, request, completion)
        return completion


class ReplayBackend:
    """Answers from a recorded JSONL: by prompt digest, else unkeyed entries in order; raises on cue.

    An entry with ``"error"`` raises ModelError with that message when its prompt comes.
    An entry without ``"digest"`` (or with ``"*"``) is a scripted answer, used in order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keyed: dict[str, dict[str, Any]] = {}
        self.script: list[dict[str, Any]] = []
        self.sha256: str | None = None
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as exc:
            raise ModelError(f"{path}: replay file not found") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ModelError(f"{path}:{number}: not a JSON line: {exc.msg}") from exc
            if entry.get("kind", "call") != "call":
                continue  # e.g. a structured-output failure report, not an answer
            digest = entry.get("digest", "*")
            if digest == "*":
                self.script.append(entry)
            else:
                # The last recording of a prompt wins: a retried call was recorded again.
                self.keyed[digest] = entry
            self.sha256 = self.sha256 or entry.get("model_sha256")

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(name=f"replay:{self.path.name}", sha256=self.sha256, kind="replay")

    def complete(self, request: CompletionRequest) -> Completion:
        digest = request.digest()
        entry = self.keyed.get(digest)
        if entry is None and self.script:
            entry = self.script.pop(0)
        if entry is None:
            raise ModelError(
                f"{self.path}: no recorded answer for prompt digest {digest[:16]} "
                f"(user message {request.user[:60]!r}); record this run with a real model first"
            )
        if "error" in entry and "text" not in entry:
            raise ModelError(str(entry["error"]))
        return Completion(
            text=str(entry.get("text", "")),
            tokens_in=int(entry.get("tokens_in", 0)),
            tokens_out=int(entry.get("tokens_out", 0)),
            seconds=float(entry.get("seconds", 0.0)),
            finish_reason=str(entry.get("finish_reason", "stop")),
        )
