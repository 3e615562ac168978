"""Streaming safetensors reading and writing, one tensor at a time.

Why not `safe_open`: it maps the whole file, and every page it touches stays resident until the file
is closed, so merging N models would hold N whole models in RSS. Here each tensor is its own
copy-on-write mapping, unmapped when the tensor is freed: no copy out of the page cache, and resident
memory of about one tensor per input. The writer lays out every shard's header from the input
headers before any data exists, so output bytes stream to disk as they are computed.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from recall.errors import RecallError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"


def same_tensor(a: str, b: str) -> bool:
    """Whether two names denote the same tensor, one perhaps under a module prefix
    ("model.layers.0.mlp.up_proj.weight" / "layers.0.mlp.up_proj.weight")."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def read_header(path: Path) -> tuple[dict, int]:
    """The parsed header of a .safetensors file and where its data starts, every entry checked against
    the file: a damaged or foreign file gives one error naming it, never a traceback, and never a
    SIGBUS from mapping a page past its end."""

    def bad(what: str) -> RecallError:
        return RecallError(f"{path} is not a readable safetensors file: {what}; re-download or re-save it")

    file_size = path.stat().st_size
    with path.open("rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise bad(f"{file_size} bytes, shorter than the 8-byte header length")
        (size,) = struct.unpack("<Q", prefix)
        if size > file_size - 8:
            raise bad(f"its header length ({size} bytes) runs past the end of the file ({file_size} bytes)")
        try:
            header = json.loads(fh.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise bad(f"its header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    spans = []
    for name, h in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(h, dict) or not {"dtype", "shape", "data_offsets"} <= h.keys():
            raise bad(f"tensor {name} lacks dtype, shape or data_offsets")
        if h["dtype"] not in DTYPES:
            raise bad(f"tensor {name} has unknown dtype {h['dtype']!r} (known: {', '.join(DTYPES)})")
        shape, offsets = h["shape"], h["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise bad(f"tensor {name} has shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise bad(f"tensor {name} has data_offsets {offsets!r}")
        expected = math.prod(shape) * DTYPES[h["dtype"]].itemsize
        if offsets[1] - offsets[0] != expected:
            raise bad(f"tensor {name} spans {offsets[1] - offsets[0]} bytes but {h['dtype']} {shape} needs {expected}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise bad(f"tensors {first} and {second} overlap")
    end = 8 + size + (spans[-1][1] if spans else 0)
    if file_size < end:
        raise RecallError(f"{path} is truncated ({file_size} of {end} bytes); re-download or re-save it")
    return header, 8 + size


class SafetensorsFile:
    """The header of one .safetensors file, and its tensors read on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header, self._data_start = read_header(self.path)
        self.metadata = header.pop("__metadata__", None) or {}
        self._fdesc: int | None = None
        self._offsets = {name: tuple(h["data_offsets"]) for name, h in header.items()}
        self.tensors = {
            name: TensorInfo(h["dtype"], tuple(h["shape"]), h["data_offsets"][1] - h["data_offsets"][0])
            for name, h in header.items()
        }

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name`, an owned copy."""
        return self.mapped(name).clone()

    def mapped(self, name: str) -> torch.Tensor:
        """The tensor `name` as a copy-on-write mapping of the file: nothing is copied out of the page
        cache, its pages are resident only while the tensor lives, and a write would go to private
        pages, never to the file."""
        info = self.tensors[name]
        if not info.nbytes:
            return torch.empty(info.shape, dtype=DTYPES[info.dtype])
        begin = self._data_start + self._offsets[name][0]
        start = begin - begin % mmap.ALLOCATIONGRANULARITY
        pages = mmap.mmap(self._fd(), begin - start + info.nbytes, access=mmap.ACCESS_COPY, offset=start)
        raw = torch.frombuffer(pages, dtype=torch.uint8, offset=begin - start, count=info.nbytes)
        return raw.view(DTYPES[info.dtype]).reshape(info.shape)

    def _fd(self) -> int:
        if self._fdesc is None:
            self._fdesc = os.open(self.path, os.O_RDONLY)
        return self._fdesc

    def __del__(self):
        if getattr(self, "_fdesc", None) is not None:
            os.close(self._fdesc)


class SafetensorsModel:
    """All tensors of a model folder (one file or an indexed set of shards), by name."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        index = folder / INDEX_NAME
        if index.is_file():
            files = shard_files(index)
        else:
            files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise RecallError(
                f"{folder} has no .safetensors weights; save the model with save_pretrained(safe_serialization=True)"
            )
        self.folder = folder
        self._file_of: dict[str, SafetensorsFile] = {}
        for name in files:
            shard = SafetensorsFile(folder / name)
            for tensor in shard.tensors:
                self._file_of[tensor] = shard
        self.tensors = {name: f.tensors[name] for name, f in self._file_of.items()}

    @property
    def nbytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    @property
    def largest(self) -> int:
        return max((info.nbytes for info in self.tensors.values()), default=0)

    def read(self, name: str) -> torch.Tensor:
        return self._file_of[name].read(name)

    def mapped(self, name: str) -> torch.Tensor:
        return self._file_of[name].mapped(name)


def shard_files(index: Path) -> list[str]:
    """The shards an index names, each checked to exist before any is opened."""
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        files = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise RecallError(
            f"{index} is not a shard index (a JSON object with a weight_map: {type(err).__name__}); "
            "re-download or re-save the model"
        ) from None
    if missing := [name for name in files if not (index.parent / name).is_file()]:
        raise RecallError(
            f"{index} names {len(missing)} shard(s) missing from {index.parent}: {', '.join(missing)}; "
            "copy the missing shards in (an interrupted download?) or re-save the model"
        )
    return files


def plan_shards(tensors: dict[str, TensorInfo], max_shard_bytes: int) -> list[list[str]]:
    """Split tensors, in order, into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, info in tensors.items():
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += info.nbytes
    return shards


class StreamingWriter:
    """Writes a (sharded) safetensors model whose tensor layout is known in advance.

    Tensors must be written in the order given; each goes straight to disk. Files are complete and
    consistent once `close()` returns (the caller writes into a temporary folder).
    """

    def __init__(self, folder: str | os.PathLike, tensors: dict[str, TensorInfo], max_shard_bytes: int = 2 << 30):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards = plan_shards(tensors, max_shard_bytes)
        n = len(self.shards)
        self.file_names = (
            ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._expected = tensors
        self._order = [(s, name) for s, names in enumerate(self.shards) for name in names]
        self._pos = 0
        self._fh = None
        self._shard = -1

    def _open_shard(self, s: int) -> None:
        if self._fh:
            self._fh.close()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in self.shards[s]:
            info = self._expected[name]
            header[name] = {
                "dtype": info.dtype,
                "shape": list(info.shape),
                "data_offsets": [offset, offset + info.nbytes],
            }
            offset += info.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the format asks for 8-byte aligned data
        self._fh = (self.folder / self.file_names[s]).open("wb")
        self._fh.write(struct.pack("<Q", len(blob)) + blob)
        self._shard = s

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard, expected_name = self._order[self._pos]
        info = self._expected[name]
        if name != expected_name or DTYPE_NAMES[tensor.dtype] != info.dtype or tuple(tensor.shape) != info.shape:
            raise RuntimeError(
                f"writer expected {expected_name} {info}, got {name} {tensor.dtype} {tuple(tensor.shape)}"
            )
        if shard != self._shard:
            self._open_shard(shard)
        data = tensor.detach().contiguous().cpu()
        self._fh.write(data.reshape(-1).view(torch.uint8).numpy().data)  # no copy
        self._pos += 1

    def close(self) -> None:
        if self._pos != len(self._order):
            raise RuntimeError(f"writer closed after {self._pos} of {len(self._order)} tensors")
        if self._fh:
            self._fh.close()
        if len(self.file_names) > 1:
            weight_map = {name: self.file_names[s] for s, name in self._order}
            total = sum(info.nbytes for info in self._expected.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
