"""The Ray executor: each job a Ray task on a cluster, behind the contract the local executor keeps.

    with RayExecutor("auto", resources={"docker": 1}) as ex:
        future = ex.submit(verify_candidate, job)      # a concurrent.futures.Future

The driver connects once: ``address`` is ``auto`` (the cluster started on this machine),
``host:port`` or ``ray://host:port``, or ``local`` (a cluster of this process alone); one that does
not answer is a ScaleError naming the address. A task takes one CPU and the resources asked for
(nodes with a Docker engine declare ``docker``) and runs this driver's code: the orchestrator
package travels with the job (``py_modules``). A pydantic result comes back as a dict and is
validated again here, so the caller gets the type a local job gives. A task lost with its node or
worker runs again elsewhere up to ``retries`` times, then its future fails with a ScaleError; an
exception the job raised comes back as itself.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self, TypeVar

import ray
from pydantic import BaseModel
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

import orchestrator
from orchestrator.errors import ScaleError

J = TypeVar("J")
R = TypeVar("R")
Shipped = tuple[str, Any]  # ("module:QualName", a pydantic model's dict) or ("", any other value)


def _call(fn: Callable[[Any], Any], job: Any) -> Shipped:
    """What runs on the node: the job, its pydantic result turned into plain values."""
    result = fn(job)
    if isinstance(result, BaseModel):
        kind = type(result)
        return f"{kind.__module__}:{kind.__qualname__}", result.model_dump()
    return "", result


def _typed(shipped: Shipped) -> Any:
    """The value :func:`_call` shipped, as the type it was made as."""
    kind, value = shipped
    if not kind:
        return value
    module, _, name = kind.partition(":")
    model: Any = importlib.import_module(module)
    for part in name.split("."):
        model = getattr(model, part)
    return model.model_validate(value)


class RayExecutor:
    """Runs jobs as Ray tasks; ``workers`` is the cluster's CPUs (Ray queues the rest)."""

    remote = True  # jobs run in other processes, maybe on other machines: they carry what they need

    def __init__(
        self,
        address: str = "auto",
        *,
        resources: dict[str, float] | None = None,
        retries: int = 2,
        connect_timeout: float = 20.0,
        num_cpus: int | None = None,
        ship: Sequence[ModuleType | Path] = (),
    ) -> None:
        self.address = address
        self.resources = dict(resources or {})
        self.retries = retries
        self._closed = False
        self._pending: dict[Future[Any], ray.ObjectRef[Shipped]] = {}
        modules = [orchestrator, *ship]
        py_modules = [m if isinstance(m, ModuleType) else str(m) for m in modules]
        self._owned = _connect(address, connect_timeout, num_cpus, {"py_modules": py_modules})
        try:
            self._workers = self._check_resources()
        except BaseException:
            self.close(wait=False)
            raise
        self._task = ray.remote(_call).options(
            num_cpus=1, resources=self.resources or None, max_retries=retries, retry_exceptions=False
        )

    @property
    def workers(self) -> int:
        return self._workers

    def submit(self, fn: Callable[[J], R], job: J) -> Future[R]:
        """Queue ``fn(job)`` as a task; its future holds the typed result, or the exception."""
        if self._closed:
            raise RuntimeError("executor is closed")
        ref = self._task.remote(fn, job)
        out: Future[R] = Future()
        self._pending[out] = ref
        name = str(getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "job"))
        ref.future().add_done_callback(lambda done: self._settle(out, done, name))
        return out

    def close(self, wait: bool = True) -> None:
        """Stop taking jobs; with ``wait`` let every submitted one end, else cancel those not done."""
        if self._closed:
            return
        self._closed = True
        pending = [ref for out, ref in list(self._pending.items()) if not out.done()]
        if wait and pending:
            ray.wait(pending, num_returns=len(pending), fetch_local=False)
        elif pending:
            for ref in pending:
                ray.cancel(ref, force=True)
        if self._owned and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(wait=exc is None)

    def _settle(self, out: Future[Any], done: Future[Any], name: str) -> None:
        self._pending.pop(out, None)
        try:
            out.set_result(_typed(done.result()))
        except TaskCancelledError:
            out.cancel()
        except RayTaskError as exc:  # the job raised: the caller sees its own exception
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            out.set_exception(cause or ScaleError(f"{name}: failed on its Ray node: {str(exc).splitlines()[0]}"))
        except RayError as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            out.set_exception(
                ScaleError(
                    f"{name}: lost with its Ray worker or node after {self.retries} retries ({detail}); "
                    "nothing of it was kept"
                )
            )
        except BaseException as exc:  # a result that cannot be rebuilt here: the caller hears of it
            out.set_exception(exc)

    def _check_resources(self) -> int:
        total: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        for resource, amount in self.resources.items():
            if total.get(resource, 0) < amount:
                raise ScaleError(
                    f"Ray cluster at {self.address}: no node offers resource {resource!r}; start its nodes with "
                    f"`ray start ... --resources '{{\"{resource}\": 1}}'` or drop it from [scale] resources"
                )
        return max(1, int(total.get("CPU", 1)))


def _connect(address: str, timeout: float, num_cpus: int | None, runtime_env: dict[str, Any]) -> bool:
    """Connect this process to the cluster at ``address``; whether it was this call that connected."""
    if ray.is_initialized():
        joined = ray.get_runtime_context().gcs_address
        if address not in ("auto", "local") and joined != address.removeprefix("ray://"):
            raise ScaleError(f"[scale] address {address!r}: this process is already joined to the cluster at {joined}")
        return False
    options: dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": False, "logging_level": "warning"}
    if address == "local":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: a cluster of our own reports nothing
        options |= {"num_cpus": num_cpus or os.cpu_count() or 1, "include_dashboard": False}
    else:
        _probe(address, timeout)
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScaleError(
            f"[scale] address {address!r}: cannot join the Ray cluster: {detail} (a cluster with token "
            "authentication needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        ) from exc
    return True


def _probe(address: str, timeout: float) -> None:
    """A TCP connection to ``host:port`` (Ray itself waits minutes on an address nobody answers)."""
    if address == "auto":
        return  # Ray finds the local cluster's address, or says at once there is none
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ScaleError(f"[scale] address {address!r}: write auto, local, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ScaleError(
            f"[scale] address {address!r}: no Ray cluster answers there ({exc.strerror or exc}); "
            "start one with `ray start --head` or fix [scale] address in converge.toml"
        ) from exc
