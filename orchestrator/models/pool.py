"""A pool of OpenAI-compatible model servers behind one role: health, least-busy routing, failover.

A role bound to several ``openai:`` endpoints (one per machine) gets an ``EndpointPool``; a call is
retried on another endpoint only where the last gave no answer, so it is never answered twice.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from orchestrator.errors import EndpointUnavailable, ModelError
from orchestrator.models.backends import CallLog, Completion, CompletionRequest, ModelIdentity
from orchestrator.models.openai import OpenAIBackend

RECHECK_SECONDS = 15.0
LATENCY_WEIGHT = 0.3  # weight of the newest call in the moving average
FAILOVER_KIND = "endpoint_failure"


@dataclass
class Endpoint:
    """One server of the pool and what the pool knows of it."""

    backend: OpenAIBackend
    in_flight: int = 0
    up: bool | None = None  # None: not checked yet
    down_since: float = 0.0
    latency: float = 0.0  # moving average of seconds per call

    @property
    def url(self) -> str:
        return self.backend.url


class EndpointPool:
    """Several OpenAI-compatible servers answering as one backend.

    Each call goes to the healthy endpoint with the fewest calls in flight (ties: the lowest recent
    latency). An endpoint that refuses, resets, times out or answers 5xx, before or during the call, is
    marked down and the call goes to the next one. A down endpoint is checked again (``GET /v1/models``)
    after ``recheck`` seconds. Which endpoint answered is on the Completion (and so in the call log, from
    which ``converge model list`` shows each one's latency and tokens/s); every failover is appended to
    the call log too.
    """

    def __init__(
        self, backends: list[OpenAIBackend], log: CallLog | None = None, recheck: float = RECHECK_SECONDS
    ) -> None:
        if not backends:
            raise ModelError("a pool needs at least one endpoint")
        self.endpoints = [Endpoint(b) for b in backends]
        self.log = log
        self.recheck = recheck
        self._lock = threading.Lock()

    @property
    def identity(self) -> ModelIdentity:
        urls = ",".join(e.url for e in self.endpoints)
        return ModelIdentity(name=f"openai:{urls}", sha256=None, kind="openai")

    def window(self) -> int | None:
        """The smallest context window the endpoints report (a prompt must fit whichever answers)."""
        windows = [w for w in (e.backend.window() for e in self.endpoints) if w is not None]
        return min(windows) if windows else None

    def complete(self, request: CompletionRequest) -> Completion:
        failures: list[str] = []
        tried: set[str] = set()
        while (endpoint := self._take(tried)) is not None:
            tried.add(endpoint.url)
            start = time.perf_counter()
            try:
                completion = endpoint.backend.complete(request)
            except EndpointUnavailable as exc:
                self._mark_down(endpoint, str(exc))
                failures.append(str(exc))
                continue
            finally:
                with self._lock:
                    endpoint.in_flight -= 1
            self._mark_up(endpoint, time.perf_counter() - start)
            return replace(completion, endpoint=endpoint.url)
        detail = "; ".join(failures) or "all endpoints are down"
        raise EndpointUnavailable(f"no endpoint of the pool {self.identity.name} answered: {detail}")

    def _take(self, tried: set[str]) -> Endpoint | None:
        """The least busy usable endpoint not tried yet for this call, counted as busy; None if none is left."""
        now = time.monotonic()
        for endpoint in self.endpoints:
            due = endpoint.up is None or (not endpoint.up and now - endpoint.down_since >= self.recheck)
            if endpoint.url not in tried and due:
                self._check(endpoint)
        with self._lock:
            usable = [e for e in self.endpoints if e.up and e.url not in tried]
            if not usable:
                return None
            chosen = min(usable, key=lambda e: (e.in_flight, e.latency))
            chosen.in_flight += 1
            return chosen

    def _check(self, endpoint: Endpoint) -> None:
        healthy = endpoint.backend.healthy()
        with self._lock:
            endpoint.up = healthy
            if not healthy:
                endpoint.down_since = time.monotonic()

    def _mark_up(self, endpoint: Endpoint, seconds: float) -> None:
        with self._lock:
            endpoint.up = True
            first = endpoint.latency == 0.0
            endpoint.latency = seconds if first else (1 - LATENCY_WEIGHT) * endpoint.latency + LATENCY_WEIGHT * seconds

    def _mark_down(self, endpoint: Endpoint, error: str) -> None:
        with self._lock:
            endpoint.up = False
            endpoint.down_since = time.monotonic()
        if self.log is not None:
            at = datetime.now(UTC).isoformat(timespec="milliseconds")
            self.log.append({"kind": FAILOVER_KIND, "at": at, "endpoint": endpoint.url, "error": error[:300]})

    def health(self) -> dict[str, bool]:
        """Each endpoint's health, checked now."""
        for endpoint in self.endpoints:
            self._check(endpoint)
        return {e.url: bool(e.up) for e in self.endpoints}
