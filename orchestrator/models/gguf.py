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
KV_BYTES_PER_VALUE = 2  # llama.cpp keeps the KV cache in f16 by default

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
class GGUFInfo:
    """What Converge needs to know about a GGUF file, read from its header."""

    path: Path
    size: int
    metadata: dict[str, Any]
    tensor_count: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: int = 0) -> int:
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        return int(value) if isinstance(value, int | float) else default

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

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """KV cache for ``n_ctx`` tokens: n_layer * n_ctx * (n_embd_k_gqa + n_embd_v_gqa) * 2 bytes."""
        n_layer = self.arch_value("block_count")
        n_embd = self.arch_value("embedding_length")
        n_head = self.arch_value("attention.head_count", 1) or 1
        n_head_kv = self.arch_value("attention.head_count_kv", n_head) or n_head
        head_k = self.arch_value("attention.key_length", n_embd // n_head)
        head_v = self.arch_value("attention.value_length", n_embd // n_head)
        return n_layer * n_ctx * (head_k * n_head_kv + head_v * n_head_kv) * KV_BYTES_PER_VALUE

    def memory_estimate(self, n_ctx: int) -> int:
        """Bytes a loaded model occupies: the weights (file size) plus the KV cache for ``n_ctx``."""
        return self.size + self.kv_cache_bytes(n_ctx)


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
                # Big arrays (token scores, types) are skipped: only their length matters here.
                self.take(struct.calcsize(_SCALARS[item_type]) * count)
                return count
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
        data_end = _tensor_data_end(reader, tensor_count)
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
        data_start = -(-handle.tell() // alignment) * alignment
    if data_start + data_end > size:
        raise ModelError(
            f"{path}: truncated GGUF file ({size} bytes, tensors need {data_start + data_end}); download it again"
        )
    return GGUFInfo(path=path, size=size, metadata=metadata, tensor_count=tensor_count)


def _tensor_data_end(reader: _Reader, tensor_count: int) -> int:
    """Offset (from the data section) where the last tensor ends."""
    end = 0
    for _ in range(tensor_count):
        reader.string()
        n_dims = reader.scalar("<I")
        values = 1
        for _ in range(n_dims):
            values *= reader.scalar("<Q")
        ttype, offset = reader.scalar("<I"), reader.scalar("<Q")
        block_bytes, block_values = TENSOR_BLOCKS.get(ttype, (0, 1))
        end = max(end, offset + values // block_values * block_bytes)
    return end
