"""`converge doctor` lines about the machine models run on: memory per NUMA node, GPUs and the VRAM
budget, the threads a model would get now, and the prompt cache against its size limit.

Read-only except ``--clean``, which trims the prompt cache down to ``models.prompt_cache_bytes``.
"""

from __future__ import annotations

from orchestrator.models import memory, placement, promptcache, threads
from orchestrator.ops.doctor import Check, DoctorContext, register_check

SIZE = placement.size_text


@register_check("models.numa")
def numa(ctx: DoctorContext) -> list[Check]:
    """Each NUMA node: its CPUs (a memory-only node, such as a CXL card, has none) and free memory."""
    nodes = memory.numa_nodes()
    if not nodes:
        return [Check("models.numa", "ready", "no NUMA information (/sys/devices/system/node): one memory tier")]
    return [
        Check(
            f"models.numa.node{n.node}",
            "ready",
            f"{SIZE(n.free)} free of {SIZE(n.total)}, CPUs {n.cpus or 'none (memory only)'}",
        )
        for n in nodes
    ]


@register_check("models.gpu")
def gpu(ctx: DoctorContext) -> Check:
    """GPUs llama.cpp can offload to, and the VRAM budget `gpu_layers = auto` fits layers into."""
    configured = ctx.ws.config().models.vram_budget if ctx.ws is not None else None
    devices = placement.gpu_devices()
    budget = placement.vram_budget(configured, devices)
    if not devices:
        return Check(
            "models.gpu",
            "ready",
            f"no GPU offload (llama-cpp-python built for the CPU); models run in RAM; VRAM budget {SIZE(budget)}",
            "for a GPU, reinstall llama-cpp-python with CMAKE_ARGS (README: GPU offload)",
        )
    names = ", ".join(f"{d.name} {SIZE(d.free)} free of {SIZE(d.total)}" for d in devices)
    return Check("models.gpu", "ready", f"{names}; VRAM budget {SIZE(budget)}")


@register_check("models.threads")
def cpu(ctx: DoctorContext) -> Check:
    """Cores usable, other work running now, and the threads an ``auto`` model would get for a call now."""
    cores = threads.usable_cores()
    busy = threads.others_busy()
    given = threads.fit_threads(cores, busy)
    return Check("models.threads", "ready", f"{cores} cores usable, {busy:.1f} busy elsewhere: auto gives {given}")


@register_check("models.prompt_cache")
def prompt_cache(ctx: DoctorContext) -> Check:
    """Saved prefix states against ``models.prompt_cache_bytes``; ``--clean`` evicts down to it."""
    if ctx.ws is None:
        return Check("models.prompt_cache", "ready", "no workspace")
    limit = ctx.ws.config().models.prompt_cache_bytes
    directory = ctx.ws.cache / "prompt-cache"
    if ctx.clean:
        removed = promptcache.PromptCache(directory, limit).evict()
        if removed:
            ctx.cleaned.append(f"{len(removed)} prompt-cache state(s)")
    used = promptcache.usage(directory)
    detail = f"{SIZE(used.bytes)} in {used.files} state(s) of {SIZE(limit)} ([models] prompt_cache_bytes)"
    if used.bytes > limit:
        return Check("models.prompt_cache", "warning", detail, "run `converge doctor --clean` to evict down to it")
    return Check("models.prompt_cache", "ready", detail)
