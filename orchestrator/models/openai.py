"""Any OpenAI-compatible chat endpoint (llama.cpp's server, llama-cpp-python's, ollama, vLLM) by URL.

A prompt is cut to the server's context window (:mod:`orchestrator.models.window`) before it is sent, so
no server truncates it silently. A server that is down or dies mid-call raises ``EndpointUnavailable``,
which a pool (``pool``) answers by trying another.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from typing import Any

from orchestrator.errors import EndpointUnavailable, ModelError
from orchestrator.models.backends import Completion, CompletionRequest, ModelIdentity
from orchestrator.models.window import fit

PROBE_TIMEOUT = 3.0
MESSAGE_OVERHEAD = 8  # template tokens around each message, when the server counts only contents
CHARS_PER_TOKEN = 3  # a cautious estimate where the server cannot count
# "maximum context length is N tokens" (OpenAI, llama-cpp-python, vLLM), "context window of N",
# "available context size (N tokens)" (llama.cpp's server)
_WINDOW_IN_ERROR = re.compile(r"(?:context length is|context window of|context size \()\s*(\d+)")
_TRANSIENT = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, OSError)


class OpenAIBackend:
    """An OpenAI-compatible chat endpoint by URL.

    The context window is read from what the server says about itself (``/props`` of llama.cpp's
    server, ``max_model_len`` of vLLM's ``/v1/models``) or learned from its refusal of a prompt that
    was too long.
    """

    def __init__(self, url: str, model: str = "default", timeout: float = 600.0) -> None:
        base = url.rstrip("/")
        self.base = base.removesuffix("/v1")
        self.endpoint = f"{self.base}/v1/chat/completions"
        self.url = url
        self.model = model
        self.timeout = timeout
        self._window: int | None = None
        self._window_looked = False
        self._counter: str | None = None  # the tokenizing route this server has, once found

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(name=f"openai:{self.url}#{self.model}", sha256=None, kind="openai")

    def healthy(self) -> bool:
        """True if the server answers its model list now."""
        try:
            self._get("/v1/models", PROBE_TIMEOUT)
        except (ModelError, *_TRANSIENT):
            return False
        return True

    def window(self) -> int | None:
        """The context window the server runs with, if it says (or has said, by refusing a prompt)."""
        if self._window is None and not self._window_looked:
            self._window_looked = True
            self._window = self._ask_window()
        return self._window

    def complete(self, request: CompletionRequest) -> Completion:
        window = self.window()
        lines_cut = 0
        for _ in range(2):  # a refusal that teaches the window gets one retry, cut to it
            if window is not None:
                fitted = fit(request, window, self._count, f"the model at {self.url}", self._raise_hint())
                request, lines_cut = fitted.request, fitted.lines_cut
            try:
                completion = self._post(request)
            except ModelError as exc:
                learned = _window_from_error(str(exc))
                if learned is None or learned == window:
                    raise
                self._window = window = learned
                continue
            return Completion(**{**asdict(completion), "lines_cut": lines_cut, "endpoint": self.url})
        raise ModelError(f"{self.endpoint}: the prompt does not fit the server's context window of {window} tokens")

    def _raise_hint(self) -> str:
        return (
            "start the server with a larger context (llama.cpp's server: -c N; llama_cpp.server: --n_ctx N; "
            "vLLM: --max-model-len N)"
        )

    def _post(self, request: CompletionRequest) -> Completion:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [asdict(m) for m in request.messages()],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        }
        if request.json_schema is not None:
            # llama.cpp's server reads the schema here; it constrains decoding like the in-process backend.
            body["response_format"] = {"type": "json_object", "schema": dict(request.json_schema)}
        start = time.perf_counter()
        payload = self._send("POST", "/v1/chat/completions", self.timeout, body)
        seconds = time.perf_counter() - start
        try:
            choice = payload["choices"][0]
            usage = payload.get("usage") or {}
            return Completion(
                text=choice["message"]["content"] or "",
                tokens_in=int(usage.get("prompt_tokens", 0)),
                tokens_out=int(usage.get("completion_tokens", 0)),
                seconds=seconds,
                finish_reason=str(choice.get("finish_reason") or "stop"),
            )
        except (KeyError, IndexError, TypeError) as exc:
            raise ModelError(f"{self.endpoint}: unexpected answer shape: {str(payload)[:200]}") from exc

    def _get(self, route: str, timeout: float) -> Any:
        return self._send("GET", route, timeout)

    def _send(self, method: str, route: str, timeout: float, body: Any = None) -> Any:
        url = f"{self.base}{route}"
        data = json.dumps(body).encode() if body is not None else None
        http_request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        http_request.method = method
        try:
            with urllib.request.urlopen(http_request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            error = EndpointUnavailable if exc.code >= 500 else ModelError
            raise error(f"{url}: HTTP {exc.code}: {detail}") from exc
        except json.JSONDecodeError as exc:
            raise ModelError(f"{url}: answer is not JSON: {exc.msg}") from exc
        except _TRANSIENT as exc:
            reason = getattr(exc, "reason", None) or exc
            raise EndpointUnavailable(f"{url}: endpoint not reachable: {reason}") from exc

    def _ask_window(self) -> int | None:
        try:
            props = self._get("/props", PROBE_TIMEOUT)
            n_ctx = props.get("n_ctx") or (props.get("default_generation_settings") or {}).get("n_ctx")
            if isinstance(n_ctx, int) and n_ctx > 0:
                return n_ctx
        except (ModelError, AttributeError):
            pass
        try:
            models = self._get("/v1/models", PROBE_TIMEOUT).get("data") or []
        except (ModelError, AttributeError):
            return None
        for entry in models:
            size = entry.get("max_model_len") if isinstance(entry, dict) else None
            if isinstance(size, int) and size > 0:
                return size
        return None

    def _count(self, request: CompletionRequest) -> int:
        """Prompt tokens of ``request``: the server's tokenizer on each message, plus the template's share."""
        messages = request.messages()
        text_tokens = sum(self._count_text(m.content) for m in messages)
        return text_tokens + MESSAGE_OVERHEAD * len(messages)

    def _count_text(self, text: str) -> int:
        routes = [self._counter] if self._counter else ["/extras/tokenize/count", "/tokenize"]
        for route in routes:
            body = {"input": text, "model": self.model} if route.startswith("/extras") else {"content": text}
            try:
                answer = self._send("POST", route, PROBE_TIMEOUT, body)
            except ModelError:
                continue
            count = answer.get("count", len(answer.get("tokens") or []))
            self._counter = route
            return int(count)
        return len(text) // CHARS_PER_TOKEN + 1


def _window_from_error(message: str) -> int | None:
    found = _WINDOW_IN_ERROR.search(message)
    return int(found.group(1)) if found else None
