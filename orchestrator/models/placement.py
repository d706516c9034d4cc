"""Where a model's memory goes: layers offloaded to the GPU under a VRAM budget, the rest in RAM.

All sizes come from the GGUF's own tensors (:mod:`orchestrator.models.gguf`), so a model that fits in
neither memory is refused before it is loaded. Only :func:`gpu_devices` touches llama.cpp (ggml's
device list), and only when asked.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ModelSettings
from orchestrator.errors import ModelError
from orchestrator.models.gguf import GGUFInfo

N_UBATCH = 512  # llama-cpp-python's default micro-batch: the compute buffer is sized for it
F32 = 4
GPU_DEVICE_TYPES = (1, 2)  # ggml_backend_dev_type: GPU, integrated GPU


def size_text(n: int) -> str:
    """Bytes for people: MiB below a GiB, else GiB with two decimals."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass(frozen=True)
class Device:
    """A GPU as ggml sees it (or as a test describes it)."""

    name: str
    total: int
    free: int


@dataclass(frozen=True)
class Placement:
    """How a model is split between VRAM and RAM for a context of ``n_ctx`` tokens."""

    gpu_layers: int  # llama.cpp's n_gpu_layers
    n_layer: int
    vram: int
    ram: int
    n_ctx: int
    kv_type: str
    weights: int  # all weights, wherever they live
    kv_bytes: int  # the whole KV cache, wherever it lives
    compute: int  # the compute buffer on the device doing the work

    @property
    def offloaded(self) -> int:
        """Repeating layers on the GPU (the output layer is counted apart)."""
        return min(self.gpu_layers, self.n_layer)

    def split(self) -> str:
        """``GPU 12/31 layers: 3.10 GiB VRAM + 5.02 GiB RAM`` (layers counting the output layer), or ``RAM 5 GiB``."""
        if self.gpu_layers == 0:
            return f"RAM {size_text(self.ram)}"
        layers = f"{self.gpu_layers}/{self.n_layer + 1}"
        return f"GPU {layers} layers: {size_text(self.vram)} VRAM + {size_text(self.ram)} RAM"


def compute_bytes(info: GGUFInfo, n_ctx: int, flash_attn: bool) -> int:
    """The compute buffer llama.cpp reserves: the larger of the logits and (without flash attention) the
    attention scores of one micro-batch, plus the activations. Checked against llama.cpp's own report."""
    n_vocab = info.arch_value("vocab_size") or _vocab_size(info)
    n_embd = info.arch_value("embedding_length")
    n_ff = info.arch_value("feed_forward_length")
    n_head = info.arch_value("attention.head_count", 1)
    ubatch = min(N_UBATCH, n_ctx)
    logits = F32 * ubatch * n_vocab
    scores = 0 if flash_attn else F32 * ubatch * n_ctx * n_head
    return max(logits, scores) + F32 * ubatch * (3 * n_embd + 2 * n_ff)


def _vocab_size(info: GGUFInfo) -> int:
    tokens = info.metadata.get("tokenizer.ggml.tokens", 0)
    return tokens if isinstance(tokens, int) else len(tokens)


def place(info: GGUFInfo, settings: ModelSettings, n_ctx: int, vram_budget: int) -> Placement:
    """The split of ``info`` for ``settings.gpu_layers`` under ``vram_budget`` bytes of VRAM.

    A number or ``all`` that does not fit the budget is a ModelError naming the fix; ``auto``
    takes what fits (0 layers when there is no VRAM to use).

    The arithmetic follows llama.cpp's offload: ``n_gpu_layers = k`` puts the last ``k`` repeating
    blocks on the GPU (``k = n_layer + 1`` adds the output layer); each block's KV cache goes with it;
    the token embeddings stay in RAM. ``auto`` takes the largest ``k`` whose weights, KV cache and
    compute buffer fit ``models.vram_budget``.
    """
    n_layer = info.n_layer
    wanted = settings.gpu_layers
    if wanted == "auto":
        best = _split(info, settings, n_ctx, 0)
        for k in range(1, n_layer + 2):
            candidate = _split(info, settings, n_ctx, k)
            if candidate.vram > vram_budget:
                break
            best = candidate
        return best
    k = n_layer + 1 if wanted == "all" else min(wanted, n_layer + 1)
    placement = _split(info, settings, n_ctx, k)
    if k > 0 and placement.vram > vram_budget:
        fitting = place(info, settings.model_copy(update={"gpu_layers": "auto"}), n_ctx, vram_budget).gpu_layers
        raise ModelError(
            f"{info.path}: gpu_layers = {wanted!r} needs {size_text(placement.vram)} of VRAM "
            f"({k} layers + KV cache for {n_ctx} tokens), more than the VRAM budget of {size_text(vram_budget)}; "
            f"set gpu_layers = {fitting} or 'auto', a smaller kv_type, or raise [models] vram_budget"
        )
    return placement


def _split(info: GGUFInfo, settings: ModelSettings, n_ctx: int, k: int) -> Placement:
    """Bytes in VRAM and RAM with the last ``k`` layers offloaded (``k > n_layer``: the output layer too)."""
    layers = info.layer_bytes()
    n_layer = len(layers)
    on_gpu = min(k, n_layer)
    kv_layer = info.kv_layer_bytes(n_ctx, settings.kv_type)
    compute = compute_bytes(info, n_ctx, settings.flash_attn)
    moved = sum(layers[n_layer - on_gpu :])
    vram = moved + on_gpu * kv_layer + (compute if k > 0 else 0)
    if k > n_layer:
        vram += info.output_bytes()  # a tied output layer is a copy of the embeddings, which stay in RAM
        moved += info.tensor_bytes("output.weight") + info.tensor_bytes("output_norm.weight")
    # The CPU keeps a full compute buffer while it runs any layer; with all on the GPU only the input's.
    cpu_compute = compute if k <= n_layer else F32 * min(N_UBATCH, n_ctx) * info.arch_value("embedding_length")
    return Placement(
        gpu_layers=k,
        n_layer=n_layer,
        vram=vram,
        ram=info.size - moved + (n_layer - on_gpu) * kv_layer + cpu_compute,
        n_ctx=n_ctx,
        kv_type=settings.kv_type,
        weights=info.weight_bytes(),
        kv_bytes=n_layer * kv_layer,
        compute=compute,
    )


def gpu_devices() -> list[Device]:
    """The GPUs llama.cpp can offload to (none when llama-cpp-python was built for the CPU only)."""
    import llama_cpp  # noqa: PLC0415  lazy: loads the native library, only needed to size VRAM

    if not llama_cpp.llama_supports_gpu_offload():
        return []
    llama_cpp.llama_backend_init()
    lib = ctypes.CDLL(str(_ggml_library(llama_cpp.__file__)))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
    ]  # fmt: skip
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if lib.ggml_backend_dev_type(dev) not in GPU_DEVICE_TYPES:
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(Device(lib.ggml_backend_dev_name(dev).decode(), int(total.value), int(free.value)))
    return devices


def _ggml_library(package_file: str) -> str:
    lib_dir = Path(package_file).parent / "lib"
    for name in ("libggml.so", "libggml.dylib", "ggml.dll"):
        if (lib_dir / name).exists():
            return str(lib_dir / name)
    raise ModelError(f"{lib_dir}: ggml library not found; reinstall llama-cpp-python")


def vram_budget(configured: int | None, devices: list[Device] | None) -> int:
    """``models.vram_budget`` if set, else the free memory of the GPUs (0 without one)."""
    if configured is not None:
        return configured
    return sum(d.free for d in devices or ())
