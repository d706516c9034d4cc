"""Eval-like jobs for executor tests: typed in, typed out, noting where they ran (shipped to Ray nodes)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel

from orchestrator.errors import SandboxError
from orchestrator.models.backends import CompletionRequest
from orchestrator.scale.model_host import HostedModel


class TrialJob(BaseModel):
    """One eval-like trial: how long it works, where it notes its start, and a file it waits for first."""

    task: str
    seconds: float = 0.0
    started: str = ""  # a file the node id is appended to when the trial starts
    wait_for: str = ""  # a file that must exist before the trial ends


class Trial(BaseModel):
    """What a trial reports back."""

    task: str
    node: str
    pid: int


def run_trial(job: TrialJob) -> Trial:
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    if job.started:
        with Path(job.started).open("a") as handle:
            handle.write(f"{job.task} {node}\n")
    time.sleep(job.seconds)
    while job.wait_for and not Path(job.wait_for).exists():
        time.sleep(0.1)
    return Trial(task=job.task, node=node, pid=os.getpid())


def broken_trial(job: TrialJob) -> Trial:
    raise SandboxError(f"{job.task}: no Docker engine answers on this node")


@dataclass(frozen=True)
class Ask:
    """A job that asks a model through the model host (a handle travels in it)."""

    host: Any
    model: str
    prompt: str
    seconds: float = 0.0  # work before asking, so jobs spread over the nodes


class Asked(BaseModel):
    text: str
    asked_on: str
    answered_on: str


def ask_model(job: Ask) -> Asked:
    time.sleep(job.seconds)
    answer = HostedModel(job.host, ("model", job.model)).complete(CompletionRequest(system="", user=job.prompt))
    node = ray.get_runtime_context().get_node_id()
    return Asked(text=answer.text, asked_on=node, answered_on=ray.get(job.host.where.remote()))
