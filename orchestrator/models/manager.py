"""Resident llama.cpp models under memory and VRAM budgets, each loaded with its own settings.

``ModelManager`` (a context manager) keeps loaded models resident, least recently used first out,
places each before loading (:mod:`orchestrator.models.placement`) and loads it with its settings from
``[models]`` and ``[models.settings.NAME]``.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import CONFIG_FILE, ModelsConfig, ModelSettings
from orchestrator.errors import ModelError
from orchestrator.models import budget as shared_budget
from orchestrator.models.gguf import GGUFInfo, read_gguf
from orchestrator.models.memory import ensure_lockable, llama_numa, locked_now, memory_on_node
from orchestrator.models.placement import Device, Placement, gpu_devices, place, size_text, vram_budget
from orchestrator.models.promptcache import PromptCache
from orchestrator.models.registry import ModelRecord
from orchestrator.models.threads import decide

BUDGET_SHARE = 0.6
KV_GGML_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type of each kv_type
_numa_in_force: list[int] = []  # llama.cpp sets its NUMA strategy once per process


def default_budget() -> int:
    """60% of the RAM available now (MemAvailable), the default ``models.memory_budget``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * BUDGET_SHARE)
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") * BUDGET_SHARE)


def where_to_set(name: str, key: str) -> str:
    """Where a model's setting lives, for messages: the file and the table."""
    return f"[models.settings.{name}] {key} (or [models] {key} for every model) in .converge/{CONFIG_FILE}"


@dataclass
class Resident:
    """A loaded model with its chat formatter, its placement and saved prefix states."""

    record: ModelRecord
    llm: Any
    n_ctx: int
    placement: Placement
    settings: ModelSettings
    formatter: Any
    states: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    threads: tuple[int, int] = (0, 0)  # what llama.cpp was last told: (generation, batch)


class ModelManager:
    """Keeps llama.cpp models loaded under RAM and VRAM budgets; LRU eviction; refusal before loading.

    A model is evicted when a new one would pass either budget. Before loading, each model is placed
    (how many layers go to the GPU, what stays in RAM, with its KV cache type and context); a model that
    fits in neither memory is refused there, naming the figures and the keys to change. Loading applies
    threads, GPU layers, KV cache type, flash attention, mlock, mmap and NUMA placement.
    """

    def __init__(
        self,
        budget: int | None = None,
        n_ctx: int | None = None,
        *,
        config: ModelsConfig | None = None,
        cache_dir: Path | None = None,
        ledger: Path | None = None,
        devices: list[Device] | None = None,
    ) -> None:
        self.config = config or ModelsConfig()
        if n_ctx is not None:
            self.config = self.config.model_copy(update={"context_length": n_ctx})
        configured = budget if budget is not None else self.config.memory_budget
        self.budget = configured if configured is not None else default_budget()
        self._devices = devices
        # with a workspace state dir, the RAM budget is shared with its other processes (budget.py)
        self.ledger = ledger
        self.cache = PromptCache(cache_dir, self.config.prompt_cache_bytes) if cache_dir is not None else None
        self._reservations: dict[str, shared_budget.Reservation] = {}
        self._resident: OrderedDict[str, Resident] = OrderedDict()
        self._headers: dict[tuple[str, int], GGUFInfo] = {}

    @property
    def n_ctx(self) -> int:
        return self.config.context_length

    @property
    def cache_dir(self) -> Path | None:
        return self.cache.directory if self.cache is not None else None

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def devices(self) -> list[Device]:
        """The GPUs offload can use (looked up once; none unless llama.cpp was built with GPU support)."""
        if self._devices is None:
            self._devices = gpu_devices() if self.config.vram_budget is None else []
        return self._devices

    def vram_budget(self) -> int:
        return vram_budget(self.config.vram_budget, self.devices())

    def resident(self) -> list[str]:
        """Names of loaded models, least recently used first."""
        return list(self._resident)

    def used(self) -> int:
        """Estimated bytes of RAM the resident models occupy."""
        return sum(r.placement.ram for r in self._resident.values())

    def used_vram(self) -> int:
        return sum(r.placement.vram for r in self._resident.values())

    def settings_for(self, record: ModelRecord) -> ModelSettings:
        return self.config.settings_for(record.name)

    def context_for(self, record: ModelRecord) -> int:
        """The context a model is loaded with: its configured one, capped at what it was trained for."""
        return self._context(record.name, record.context_length)

    def _context(self, name: str, trained: int) -> int:
        n_ctx = self.config.settings_for(name).context_length
        return min(n_ctx, trained) if trained > 0 else n_ctx

    def header(self, record: ModelRecord) -> GGUFInfo:
        key = (record.path, record.size)
        if key not in self._headers:
            self._headers[key] = read_gguf(Path(record.path))
        return self._headers[key]

    def placement(self, record: ModelRecord) -> Placement:
        """Where ``record`` goes (VRAM and RAM) with its settings; a ModelError if it fits in neither."""
        return self.place(record.name, self.header(record))

    def place(self, name: str, info: GGUFInfo) -> Placement:
        """Where the model ``name`` with header ``info`` goes; a ModelError naming the fix if it fits in neither."""
        settings = self.config.settings_for(name)
        n_ctx = self._context(name, info.context_length)
        vram = self.vram_budget()
        if settings.gpu_layers not in (0, "auto") and vram == 0:
            raise ModelError(
                f"model {name!r}: gpu_layers = {settings.gpu_layers!r} but no GPU is available to llama.cpp "
                "(llama-cpp-python built for the CPU only; see the README's GPU section) and [models] vram_budget "
                "is not set; use gpu_layers = 'auto' or 0"
            )
        placement = place(info, settings, n_ctx, vram)
        if placement.ram > self.budget:
            on_gpu = f", {placement.split()}" if placement.gpu_layers else ""
            raise ModelError(
                f"model {name!r} ({info.path}) needs about {size_text(placement.ram)} of RAM "
                f"(weights {size_text(placement.weights)} + KV cache {size_text(placement.kv_bytes)} "
                f"({settings.kv_type}) for {n_ctx} tokens + compute {size_text(placement.compute)}{on_gpu}), "
                f"more than the memory budget of {size_text(self.budget)} and VRAM budget of {size_text(vram)}; "
                f"use a smaller quantisation than {info.quantisation}, a shorter context "
                f"({where_to_set(name, 'context_length')}), kv_type = 'q8_0', or raise [models] memory_budget"
            )
        return placement

    def acquire(self, record: ModelRecord) -> Resident:
        """The loaded model for ``record``: free if resident, else loaded (evicting LRU models to fit)."""
        key = f"{record.name}:{record.sha256}"
        if key in self._resident:
            self._resident.move_to_end(key)
            return self._resident[key]
        placement = self.placement(record)
        vram = self.vram_budget()
        while self._resident and (
            self.used() + placement.ram > self.budget or self.used_vram() + placement.vram > vram
        ):
            self.evict(next(iter(self._resident)))
        settings = self.settings_for(record)
        if self.ledger is not None:
            shared = placement.ram - placement.kv_bytes - placement.compute if settings.mmap else 0
            self._reservations[key] = shared_budget.reserve(
                self.ledger, os.getpid(), record.sha256, placement.ram, self.budget, shared=max(0, shared)
            )
        try:
            resident = self._load(record, placement, settings)
        except BaseException:
            self._release(key)
            raise
        self._resident[key] = resident
        return resident

    def evict(self, key: str) -> None:
        """Unload one resident model (by ``name:sha256`` key or by name)."""
        if key not in self._resident:
            key = next((k for k in self._resident if k.split(":", 1)[0] == key), key)
        resident = self._resident.pop(key, None)
        if resident is not None:
            resident.llm.close()
        self._release(key)

    def _release(self, key: str) -> None:
        reservation = self._reservations.pop(key, None)
        if reservation is not None:
            shared_budget.release(reservation)

    def close(self) -> None:
        """Unload every model."""
        for key in list(self._resident):
            self.evict(key)

    def _load(self, record: ModelRecord, placement: Placement, settings: ModelSettings) -> Resident:
        path = Path(record.path)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise ModelError(f"{path}: model file of {record.name!r} not found; register it again") from exc
        if size != record.size:
            raise ModelError(f"{path}: changed since it was registered as {record.name!r}; run `converge model add`")
        read_gguf(path)  # a clear error for a damaged file instead of llama.cpp's
        from llama_cpp import Llama  # noqa: PLC0415  lazy: the native library, loaded only with a model
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415  lazy: as above

        numa = _claim_numa(record.name, settings.numa)
        node = settings.numa if isinstance(settings.numa, int) else None
        in_ram = placement.ram - placement.kv_bytes - placement.compute
        locked_before = locked_now()
        if settings.mlock:
            ensure_lockable(in_ram, f"model {record.name!r}")
        counts = decide(settings.threads, settings.threads_batch)
        try:
            with quiet_stderr(), memory_on_node(node):
                llm = Llama(
                    model_path=str(path),
                    n_ctx=placement.n_ctx,
                    n_threads=counts.threads,
                    n_threads_batch=counts.threads_batch,
                    n_gpu_layers=placement.gpu_layers,
                    type_k=KV_GGML_TYPES[settings.kv_type],
                    type_v=KV_GGML_TYPES[settings.kv_type],
                    flash_attn=settings.flash_attn,
                    use_mlock=settings.mlock,
                    # weights bound to a node are read into this process's memory there, not the page cache's
                    use_mmap=settings.mmap and node is None,
                    numa=numa,
                    verbose=False,
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"{path}: llama.cpp cannot load it: {exc}") from exc
        if settings.mlock and locked_now() - locked_before < in_ram // 2:
            llm.close()
            raise ModelError(
                f"model {record.name!r}: mlock did not lock its weights ({size_text(locked_now() - locked_before)} "
                f"locked of {size_text(in_ram)}); raise RLIMIT_MEMLOCK or set mlock = false"
            )
        template = record.chat_template or _CHATML
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", errors="replace")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", errors="replace")
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        return Resident(
            record=record,
            llm=llm,
            n_ctx=placement.n_ctx,
            placement=placement,
            settings=settings,
            formatter=formatter,
            threads=(counts.threads, counts.threads_batch),
        )


def _claim_numa(name: str, setting: str | int) -> int:
    """llama.cpp's NUMA strategy for this load; a second, different one in the same process is an error."""
    strategy = llama_numa(setting)
    if strategy == 0:
        return 0
    if _numa_in_force and _numa_in_force[0] != strategy:
        raise ModelError(
            f"model {name!r}: numa = {setting!r}, but this process already runs llama.cpp with another NUMA "
            f"strategy (it is set once per process); give every model the same numa in .converge/{CONFIG_FILE}"
        )
    _numa_in_force[:] = [strategy]
    return strategy


# Used when a GGUF carries no chat template.
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence llama.cpp's C-level logging while loading (it writes to fd 2 directly)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
