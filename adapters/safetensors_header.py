"""A bounded, pure reader of the safetensors header, so validation never deserialises tensors.

Format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the raw tensor data.
The JSON maps tensor names to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative
to the data section) plus an optional `"__metadata__": {str: str}`. We check everything the
safetensors library itself would check before mmap-ing (dtype known, shape sane, byte length
equal to shape x dtype size, offsets contiguous and covering the data exactly), because a header
that lies is how a crafted file crashes or confuses a loader.

Example:
    tensors = parse_header(prefix_bytes, file_size=os.path.getsize(p))
    tensors["...lora_A.weight"].shape  # (8, 256)
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adapters.errors import ArtifactError

# A LoRA header lists a few hundred tensors; 100 MB is far above any honest header, yet bounded.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_TENSORS = 100_000
MAX_NDIM = 8

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _invalid(message: str) -> ArtifactError:
    return ArtifactError(f"adapter_model.safetensors: {message}", code="artifact_invalid")


def header_length(prefix: bytes, file_size: int) -> int:
    """Decode and bound the 8-byte length prefix before reading anything else."""
    if len(prefix) < 8 or file_size < 8:
        raise _invalid("file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n < 2 or n > MAX_HEADER_BYTES:
        raise _invalid(f"header length {n} out of bounds")
    if n > file_size - 8:
        raise _invalid("header length exceeds the file size")
    return int(n)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tensor(name: str, raw: object, data_size: int) -> TensorInfo:
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise _invalid(f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _invalid(f"tensor {name!r}: unknown dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(_is_int(d) and 0 <= d < 2**40 for d in shape)
    ):
        raise _invalid(f"tensor {name!r}: bad shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise _invalid(f"tensor {name!r}: bad data_offsets")
    begin, end = int(offsets[0]), int(offsets[1])
    if math.prod(shape) * DTYPE_SIZES[dtype] != end - begin:
        raise _invalid(f"tensor {name!r}: byte length does not match shape x dtype")
    return TensorInfo(dtype=dtype, shape=tuple(int(d) for d in shape), begin=begin, end=end)


def parse_header(prefix: bytes, file_size: int) -> dict[str, TensorInfo]:
    """Parse `prefix` (the first 8 + N bytes of the file, or more) given the file's total size.

    Raises ArtifactError(code="artifact_invalid") on anything malformed; never anything else.
    """
    n = header_length(prefix, file_size)
    if len(prefix) < 8 + n:
        raise _invalid("truncated header")
    blob = prefix[8 : 8 + n]
    try:
        text = blob.decode("utf-8")
        doc = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _invalid("header is not valid UTF-8 JSON") from exc
    if not isinstance(doc, dict):
        raise _invalid("header is not a JSON object")
    if not text.lstrip().startswith("{"):
        raise _invalid("header is not a JSON object")
    meta = doc.pop("__metadata__", None)
    if meta is not None and (
        not isinstance(meta, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        raise _invalid("__metadata__ must map strings to strings")
    if len(doc) > MAX_TENSORS:
        raise _invalid("too many tensors")
    data_size = file_size - 8 - n
    tensors = {name: _tensor(name, raw, data_size) for name, raw in doc.items()}
    # Offsets must tile the data section exactly: no overlap (aliasing), no gap, no trailing bytes.
    cursor = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != cursor:
            raise _invalid("tensor data offsets overlap or leave gaps")
        cursor = info.end
    if cursor != data_size:
        raise _invalid("tensor data does not cover the data section exactly")
    return tensors


def encode_zeros(tensors: Mapping[str, tuple[str, Sequence[int]]]) -> bytes:
    """The writer's side, for generated artifacts: a whole safetensors file whose tensors
    (name -> (dtype, shape)) are all zeros. Pure; no torch or numpy."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = DTYPE_SIZES[dtype] * math.prod(shape)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)
