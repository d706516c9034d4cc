"""Writing GGUF headers for tests: a model of any shape as a sparse file (the header is real, the weights
are holes), so layer fitting and refusals are tested on a 70B without 40 GB of disk."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

# ggml types used here: (type id, bytes per block, values per block)
F32, Q4_K, Q6_K = (0, 4, 1), (12, 144, 256), (14, 210, 256)


@dataclass(frozen=True)
class Shape:
    """A llama-like model: the numbers its GGUF header carries."""

    n_layer: int = 80
    n_embd: int = 8192
    n_head: int = 64
    n_head_kv: int = 8
    n_ff: int = 28672
    n_vocab: int = 128256
    n_ctx_train: int = 131072

    def tensors(self) -> list[tuple[str, list[int], tuple[int, int, int]]]:
        kv = self.n_embd // self.n_head * self.n_head_kv
        found = [("token_embd.weight", [self.n_embd, self.n_vocab], Q4_K)]
        for i in range(self.n_layer):
            found += [
                (f"blk.{i}.attn_norm.weight", [self.n_embd], F32),
                (f"blk.{i}.attn_q.weight", [self.n_embd, self.n_embd], Q4_K),
                (f"blk.{i}.attn_k.weight", [self.n_embd, kv], Q4_K),
                (f"blk.{i}.attn_v.weight", [self.n_embd, kv], Q4_K),
                (f"blk.{i}.attn_output.weight", [self.n_embd, self.n_embd], Q4_K),
                (f"blk.{i}.ffn_norm.weight", [self.n_embd], F32),
                (f"blk.{i}.ffn_gate.weight", [self.n_embd, self.n_ff], Q4_K),
                (f"blk.{i}.ffn_up.weight", [self.n_embd, self.n_ff], Q4_K),
                (f"blk.{i}.ffn_down.weight", [self.n_ff, self.n_embd], Q4_K),
            ]
        return [
            *found,
            ("output_norm.weight", [self.n_embd], F32),
            ("output.weight", [self.n_embd, self.n_vocab], Q6_K),
        ]


def nbytes(dims: list[int], kind: tuple[int, int, int]) -> int:
    values = 1
    for d in dims:
        values *= d
    return values // kind[2] * kind[1]


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path: Path, shape: Shape) -> dict[str, int]:
    """Write ``shape`` as a GGUF file (sparse data); returns each tensor's byte size."""
    metadata = [
        ("general.architecture", 8, _string("llama")),
        ("general.name", 8, _string("synthetic-70b")),
        ("general.file_type", 4, struct.pack("<I", 15)),
        ("llama.block_count", 4, struct.pack("<I", shape.n_layer)),
        ("llama.context_length", 4, struct.pack("<I", shape.n_ctx_train)),
        ("llama.embedding_length", 4, struct.pack("<I", shape.n_embd)),
        ("llama.feed_forward_length", 4, struct.pack("<I", shape.n_ff)),
        ("llama.attention.head_count", 4, struct.pack("<I", shape.n_head)),
        ("llama.attention.head_count_kv", 4, struct.pack("<I", shape.n_head_kv)),
        ("llama.vocab_size", 4, struct.pack("<I", shape.n_vocab)),
    ]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(shape.tensors()), len(metadata)))
    for key, vtype, value in metadata:
        out += _string(key) + struct.pack("<I", vtype) + value
    sizes, offset = {}, 0
    for name, dims, kind in shape.tensors():
        out += _string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", kind[0], offset)
        sizes[name] = nbytes(dims, kind)
        offset += -(-sizes[name] // 32) * 32
    out += b"\0" * (-len(out) % 32)
    with path.open("wb") as handle:
        handle.write(out)
        handle.truncate(len(out) + offset)
    return sizes
