"""Reading a GGUF file's header: metadata, tensor extents, and the memory it needs.

A small pure-Python reader, so registering a model or refusing one that cannot fit
never loads llama.cpp. It checks what the loader would trip over later: the magic,
the version, a header cut short, and tensor data that ends past the end of the file
(a truncated download).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator.errors import ModelError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Bytes per cached value of each KV cache type: f16, and the 32-value blocks of q8_0 and q4_0.
KV_BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
SMALL_ARRAY = 1024  # scalar arrays up to this length (per-layer values) are kept; longer ones only counted

# llama_ftype -> the name people use for the quantisation.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}  # fmt: skip

# ggml tensor type -> (bytes per block, values per block), for the types models ship in.
TENSOR_BLOCKS = {
    0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32), 8: (34, 32),
    9: (36, 32), 10: (84, 256), 11: (110, 256), 12: (144, 256), 13: (176, 256), 14: (210, 256),
    15: (292, 256), 24: (1, 1), 25: (2, 1), 26: (4, 1), 27: (8, 1), 28: (8, 1), 30: (2, 1),
}  # fmt: skip

# GGUF value types: struct format of the scalars; 8 is a string, 9 an array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Tensor:
    """One tensor of the file: its name and the bytes it occupies (up to the next tensor's offset)."""

    name: str
    nbytes: int

    @property
    def layer(self) -> int | None:
        """The repeating block (``blk.N.``) it belongs to, or None for embeddings, output and norms."""
        head, _, rest = self.name.partition(".")
        number = rest.partition(".")[0]
        return int(number) if head == "blk" and number.isdigit() else None


@dataclass(frozen=True)
class GGUFInfo:
    """What Converge needs to know about a GGUF file, read from its header."""

    path: Path
    size: int
    metadata: dict[str, Any]
    tensor_count: int
    tensors: tuple[Tensor, ...] = ()

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: int = 0) -> int:
        """An architecture number; a per-layer array gives its largest value (estimates stay on the safe side)."""
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            value = max(value)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default

    @property
    def n_layer(self) -> int:
        return self.arch_value("block_count")

    def layer_bytes(self) -> list[int]:
        """Weight bytes of each repeating block, block 0 first."""
        sizes = [0] * self.n_layer
        for tensor in self.tensors:
            if tensor.layer is not None and tensor.layer < len(sizes):
                sizes[tensor.layer] += tensor.nbytes
        return sizes

    def tensor_bytes(self, name: str) -> int:
        return sum(t.nbytes for t in self.tensors if t.name == name)

    def output_bytes(self) -> int:
        """Bytes of the output layer; a model whose output shares the token embeddings gets a copy of them."""
        weight = self.tensor_bytes("output.weight") or self.tensor_bytes("token_embd.weight")
        return weight + self.tensor_bytes("output_norm.weight")

    def weight_bytes(self) -> int:
        """Bytes of all tensors (the file minus its header)."""
        return sum(t.nbytes for t in self.tensors) or self.size

    @property
    def context_length(self) -> int:
        return self.arch_value("context_length")

    @property
    def quantisation(self) -> str:
        file_type = self.metadata.get("general.file_type")
        if file_type is None:
            return "unknown"
        return FILE_TYPES.get(int(file_type), f"type-{file_type}")

    @property
    def chat_template(self) -> str | None:
        template = self.metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name", self.path.stem))

    def kv_values_per_token(self) -> int:
        """Values one layer caches per token: n_embd_k_gqa + n_embd_v_gqa."""
        n_embd = self.arch_value("embedding_length")
        n_head = self.arch_value("attention.head_count", 1) or 1
        n_head_kv = self.arch_value("attention.head_count_kv", n_head) or n_head
        head_k = self.arch_value("attention.key_length", n_embd // n_head)
        head_v = self.arch_value("attention.value_length", n_embd // n_head)
        return (head_k + head_v) * n_head_kv

    def kv_layer_bytes(self, n_ctx: int, kv_type: str = "f16") -> int:
        """KV cache of one layer for ``n_ctx`` tokens in ``kv_type`` (f16, q8_0, q4_0)."""
        return int(n_ctx * self.kv_values_per_token() * KV_BYTES_PER_VALUE[kv_type])

    def kv_cache_bytes(self, n_ctx: int, kv_type: str = "f16") -> int:
        """KV cache for ``n_ctx`` tokens: n_layer * n_ctx * (n_embd_k_gqa + n_embd_v_gqa) * bytes per value."""
        return self.n_layer * self.kv_layer_bytes(n_ctx, kv_type)

    def memory_estimate(self, n_ctx: int, kv_type: str = "f16") -> int:
        """Bytes a model loaded wholly in RAM occupies: the weights (file size) plus the KV cache for ``n_ctx``."""
        return self.size + self.kv_cache_bytes(n_ctx, kv_type)


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle = handle
        self.path = path

    def take(self, n: int) -> bytes:
        data = self.handle.read(n)
        if len(data) != n:
            raise ModelError(f"{self.path}: truncated GGUF file (header ends early); download it again")
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.scalar("<Q")
        if length > 1 << 30:
            raise ModelError(f"{self.path}: corrupt GGUF header (string of {length} bytes)")
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _SCALARS:
                fmt = _SCALARS[item_type]
                data = self.take(struct.calcsize(fmt) * count)
                if count <= SMALL_ARRAY:  # per-layer values (head counts, window patterns)
                    return list(struct.unpack(f"<{count}{fmt[1]}", data))
                return count  # token scores and types: only their length matters here
            return [self.value(item_type) for _ in range(count)] if count <= 64 else self._skip(item_type, count)
        raise ModelError(f"{self.path}: corrupt GGUF header (unknown value type {vtype})")

    def _skip(self, item_type: int, count: int) -> int:
        for _ in range(count):
            self.value(item_type)
        return count


def read_gguf(path: Path) -> GGUFInfo:
    """Read the header of the GGUF file at ``path``; a ModelError names the path and what is wrong."""
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: model file not found") from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror}") from exc
    with handle:
        reader = _Reader(handle, path)
        if handle.read(4) != MAGIC:
            raise ModelError(f"{path}: not a GGUF model file (bad magic); give a .gguf file")
        version = reader.scalar("<I")
        if version not in (2, 3):
            raise ModelError(f"{path}: unsupported GGUF version {version}")
        tensor_count, kv_count = reader.scalar("<Q"), reader.scalar("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = reader.string()
            metadata[key] = reader.value(reader.scalar("<I"))
        extents = _tensor_extents(reader, tensor_count)
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
        data_start = -(-handle.tell() // alignment) * alignment
    data_end = max((offset + nbytes for _, offset, nbytes in extents), default=0)
    if data_start + data_end > size:
        raise ModelError(
            f"{path}: truncated GGUF file ({size} bytes, tensors need {data_start + data_end}); download it again"
        )
    return GGUFInfo(
        path=path, size=size, metadata=metadata, tensor_count=tensor_count, tensors=_sizes(extents, size - data_start)
    )


def _tensor_extents(reader: _Reader, tensor_count: int) -> list[tuple[str, int, int]]:
    """Each tensor's name, offset in the data section and size by its type (0 for a type not in the table)."""
    extents = []
    for _ in range(tensor_count):
        name = reader.string()
        n_dims = reader.scalar("<I")
        values = 1
        for _ in range(n_dims):
            values *= reader.scalar("<Q")
        ttype, offset = reader.scalar("<I"), reader.scalar("<Q")
        block_bytes, block_values = TENSOR_BLOCKS.get(ttype, (0, 1))
        extents.append((name, offset, values // block_values * block_bytes))
    return extents


def _sizes(extents: list[tuple[str, int, int]], data_size: int) -> tuple[Tensor, ...]:
    """Tensor sizes from the gaps between offsets, so types missing from the table are still counted."""
    ordered = sorted(extents, key=lambda e: e[1])
    tensors = []
    for i, (name, offset, nbytes) in enumerate(ordered):
        following = ordered[i + 1][1] if i + 1 < len(ordered) else data_size
        tensors.append(Tensor(name, max(nbytes, following - offset)))
    return tuple(tensors)
