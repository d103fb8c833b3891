"""Tensor-at-a-time reading and writing of Hugging Face checkpoints, in bounded memory.

Everything in the weights toolkit (diff / recover / merge-lora / verify / export-gguf) goes
through this module, so peak memory is set by the largest *tensor*, never by the model:

* ``SafetensorsFile`` parses and validates a ``.safetensors`` header itself and reads one tensor
  with ``readinto`` into a fresh buffer. (``safetensors.safe_open`` maps the whole file, and every
  page read through the map stays in the process's RSS until the file is closed, so reading a
  shard through it costs a whole shard of RSS; the test suite uses ``safe_open`` as the
  reference reader.)
* ``TorchBinFile`` reads legacy ``pytorch_model*.bin`` with ``torch.load(weights_only=True,
  mmap=True)``: never a full unpickle, and storages stay on disk until a tensor is touched.
* ``StreamingSafetensorsWriter`` writes a ``.safetensors`` file from a plan (name, dtype, shape)
  known up front, one tensor at a time, hashing the bytes as they go.
* ``Checkpoint`` is a model or adapter directory: its shards, the tensor -> file map (from the
  index file, checked against the files), and lazily opened readers (one shard open at a time).
* ``staged_dir`` writes an output directory under a temporary name and renames it into place,
  so nothing is ever half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from knowlm_ray.atomic import atomic_dir
from knowlm_ray.errors import UserError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
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
}
for _name, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)
DTYPE_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# Files a model directory carries besides its weights (copied by every tool that writes a model).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
SIDE_FILES = ("generation_config.json",) + TOKENIZER_FILES
MANIFEST = "checksums.sha256"
MAX_HEADER = 100 * 2**20  # safetensors' own limit

WEIGHT_LAYOUTS = (  # (index file, single file) in the order transformers prefers them
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
ADAPTER_LAYOUTS = (("adapter_model.safetensors.index.json", "adapter_model.safetensors"), (None, "adapter_model.bin"))


class WeightsError(UserError, ValueError):
    """A problem with user-supplied weights; the message names the file or tensor."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "", "auto"):
        return None
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise WeightsError(f"unknown dtype {name!r} (use float32, float16 or bfloat16)")
    return dt


def nbytes_of(dtype: torch.dtype, shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def _byte_view(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor's storage (works for bf16, bool, 0-d)."""
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    return t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    begin: int = 0  # absolute byte offset in the file (safetensors only)
    nbytes: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class SafetensorsFile:
    """Header-validated reader that copies one tensor at a time out of the file (no mmap)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise WeightsError(f"{self.path}: not a safetensors file (only {size} bytes)")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER or 8 + n > size:
                    raise WeightsError(f"{self.path}: corrupt safetensors header (length {n}, file {size} bytes)")
                raw = fh.read(n)
        except OSError as exc:
            raise WeightsError(f"cannot read {self.path}: {exc}") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{self.path}: corrupt safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise WeightsError(f"{self.path}: corrupt safetensors header (not an object)")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        data_start = 8 + n
        infos: list[TensorInfo] = []
        for name, ent in header.items():
            try:
                dt = SAFETENSORS_DTYPES[ent["dtype"]]
                shape = tuple(int(s) for s in ent["shape"])
                b, e = (int(x) for x in ent["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise WeightsError(f"{self.path}: corrupt header entry for tensor {name!r}: {ent!r}") from None
            if any(s < 0 for s in shape) or e - b != nbytes_of(dt, shape):
                raise WeightsError(
                    f"{self.path}: tensor {name!r} has {e - b} bytes for shape {list(shape)} "
                    f"{ent['dtype']} (corrupt header)"
                )
            infos.append(TensorInfo(name, dt, shape, self.path, data_start + b, e - b))
        end = data_start
        for ti in sorted(infos, key=lambda t: t.begin):
            if ti.begin != end:
                raise WeightsError(
                    f"{self.path}: tensor {ti.name!r} starts at byte {ti.begin - data_start}, "
                    f"expected {end - data_start} (corrupt or overlapping header)"
                )
            end += ti.nbytes
        if end != size:
            what = "truncated" if end > size else "has trailing bytes"
            raise WeightsError(
                f"{self.path}: file {what}: header describes {end} bytes, file has {size} "
                "(an interrupted download or copy?)"
            )
        self.tensors: dict[str, TensorInfo] = {t.name: t for t in sorted(infos, key=lambda t: t.begin)}
        self._fh = None

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def read(self, name: str) -> torch.Tensor:
        ti = self.tensors[name]
        out = torch.empty(ti.shape, dtype=ti.dtype)
        if ti.nbytes:
            if self._fh is None:
                self._fh = open(self.path, "rb", buffering=0)
            self._fh.seek(ti.begin)
            buf = memoryview(_byte_view(out).numpy())
            got = 0
            while got < ti.nbytes:
                k = self._fh.readinto(buf[got:])
                if not k:
                    raise WeightsError(f"{self.path}: unexpected end of file reading tensor {name!r}")
                got += k
        return out

    def iter_chunks(self, name: str, n: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, flat chunk) pairs covering the tensor, read through one reused ``n``-element buffer
        (valid until the next step)."""
        ti = self.tensors[name]
        total = ti.numel
        if not total:
            return
        esz = ti.nbytes // total
        buf = torch.empty(min(n, total), dtype=ti.dtype)
        if self._fh is None:
            self._fh = open(self.path, "rb", buffering=0)
        for start in range(0, total, n):
            view = buf[: min(n, total - start)]
            mv = memoryview(_byte_view(view).numpy())
            self._fh.seek(ti.begin + start * esz)
            got = 0
            while got < len(mv):
                k = self._fh.readinto(mv[got:])
                if not k:
                    raise WeightsError(f"{self.path}: unexpected end of file reading tensor {name!r}")
                got += k
            yield start, view

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class TorchBinFile:
    """A legacy ``torch.save`` state dict, memory-mapped, loaded with ``weights_only=True``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            try:
                sd = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):  # pre-1.6 non-zip format cannot be mapped
                    raise
                sd = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to unpickle safely is the same user error
            raise WeightsError(
                f"cannot load {self.path} as a weights-only PyTorch state dict: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        if not isinstance(sd, dict):
            raise WeightsError(f"{self.path}: expected a state dict, found {type(sd).__name__}")
        self._sd: dict[str, torch.Tensor] | None = {}
        self.tensors: dict[str, TensorInfo] = {}
        for k, v in sd.items():
            if not isinstance(v, torch.Tensor):
                raise WeightsError(f"{self.path}: entry {k!r} is a {type(v).__name__}, not a tensor")
            self._sd[k] = v
            self.tensors[k] = TensorInfo(k, v.dtype, tuple(v.shape), self.path, 0, v.numel() * v.element_size())
        self.metadata: dict[str, str] = {}

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def read(self, name: str) -> torch.Tensor:
        assert self._sd is not None, "file closed"
        # A private contiguous copy: the result never aliases the shared mapping.
        return self._sd[name].contiguous().clone()

    def iter_chunks(self, name: str, n: int) -> Iterator[tuple[int, torch.Tensor]]:
        assert self._sd is not None, "file closed"
        flat = self._sd[name].reshape(-1)
        for start in range(0, flat.numel(), n):
            yield start, flat[start : start + n]

    def close(self) -> None:
        self._sd = None


def open_weights(path: str | Path) -> SafetensorsFile | TorchBinFile:
    path = Path(path)
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in (".bin", ".pt", ".pth"):
        return TorchBinFile(path)
    raise WeightsError(f"{path}: unknown weights format (expected .safetensors or .bin)")


class StreamingSafetensorsWriter:
    """Write a ``.safetensors`` file tensor by tensor from a plan fixed up front.

    The header (names, dtypes, shapes, offsets) is written first; ``write`` must then be called in
    plan order. Bytes are hashed on the way out (``sha256`` after ``close``).
    """

    def __init__(
        self,
        path: str | Path,
        plan: list[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.plan = [(n, dt, tuple(int(s) for s in shape)) for n, dt, shape in plan]
        names = [p[0] for p in self.plan]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in plan")
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        off = 0
        for name, dt, shape in self.plan:
            nb = nbytes_of(dt, shape)
            header[name] = {"dtype": DTYPE_TO_SAFETENSORS[dt], "shape": list(shape), "data_offsets": [off, off + nb]}
            off += nb
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-(len(raw) + 8) % 8)
        self._hash = hashlib.sha256()
        self._fh = open(self.path, "wb")
        self._emit(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def _emit(self, data) -> None:
        self._hash.update(data)
        self._fh.write(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.plan):
            raise ValueError(f"tensor {name!r} is not in the plan of {self.path.name}")
        pname, dt, shape = self.plan[self._next]
        if name != pname or tensor.dtype != dt or tuple(tensor.shape) != shape:
            raise ValueError(
                f"{self.path.name}: expected {pname} {dtype_name(dt)} {list(shape)}, got "
                f"{name} {dtype_name(tensor.dtype)} {list(tensor.shape)}"
            )
        if tensor.numel():
            self._emit(memoryview(_byte_view(tensor.detach().cpu()).numpy()))
        self._next += 1

    def close(self) -> str:
        if self._next != len(self.plan):
            missing = self.plan[self._next][0]
            self._fh.close()
            raise ValueError(f"{self.path.name}: closed before tensor {missing!r} was written")
        self._fh.close()
        return self._hash.hexdigest()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._fh.close()


def shard_names(n: int, prefix: str = "model") -> list[str]:
    if n == 1:
        return [f"{prefix}.safetensors"]
    return [f"{prefix}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


@dataclass
class ShardedWriter:
    """Writes a planned list of shards into ``directory`` plus the index when sharded."""

    directory: Path
    shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]]
    prefix: str = "model"
    metadata: dict[str, str] | None = None
    sha256: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.shards = [s for s in self.shards if s]
        self.files = shard_names(max(len(self.shards), 1), self.prefix)
        self._cur: StreamingSafetensorsWriter | None = None
        self._i = -1
        self._j = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._cur is None or self._j >= len(self.shards[self._i]):
            self._finish_current()
            self._i += 1
            self._j = 0
            self._cur = StreamingSafetensorsWriter(
                self.directory / self.files[self._i], self.shards[self._i], self.metadata
            )
        self._cur.write(name, tensor)
        self._j += 1

    def _finish_current(self) -> None:
        if self._cur is not None:
            self.sha256[self.files[self._i]] = self._cur.close()
            self._cur = None

    def close(self) -> dict[str, str]:
        if not self.shards:  # an empty model still gets a (valid, empty) file
            w = StreamingSafetensorsWriter(self.directory / self.files[0], [], self.metadata)
            self.sha256[self.files[0]] = w.close()
        self._finish_current()
        if self._i != len(self.shards) - 1:
            raise ValueError(f"only {self._i + 1} of {len(self.shards)} shards were written")
        if len(self.shards) > 1:
            weight_map, total = {}, 0
            for fname, plan in zip(self.files, self.shards):
                for n, dt, shape in plan:
                    weight_map[n] = fname
                    total += nbytes_of(dt, shape)
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.directory / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return self.sha256

    def abort(self) -> None:
        if self._cur is not None:
            self._cur.abort()


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="tensor", disable=None, leave=False)


def write_shards(
    directory: Path,
    shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]],
    produce: Callable[[str, torch.dtype], torch.Tensor],
    desc: str | None = None,
) -> dict[str, str]:
    """Stream every planned tensor, in plan order, as ``produce(name, dtype)`` returns it, into
    ``directory`` (ShardedWriter); returns the files' sha256. Only one produced tensor is alive at a
    time; on failure the partial file is removed (the staged directory around it goes too)."""
    writer = ShardedWriter(directory, shards)
    bar = _progress(sum(map(len, shards)), desc) if desc else None
    try:
        for plan in shards:
            for name, dt, _shape in plan:
                writer.write(name, produce(name, dt).to(dt))
                if bar is not None:
                    bar.update(1)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()


class Checkpoint:
    """The weight files of a model (or peft adapter) directory, read one shard at a time."""

    def __init__(self, directory: str | Path, layouts=WEIGHT_LAYOUTS, what: str = "model"):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise WeightsError(f"{what} directory not found: {self.dir}")
        self.index_file: Path | None = None
        weight_map: dict[str, str] | None = None
        files: list[str] = []
        for index_name, single in layouts:
            if index_name and (self.dir / index_name).is_file():
                self.index_file = self.dir / index_name
                try:
                    weight_map = json.loads(self.index_file.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise WeightsError(f"{self.index_file}: not a valid index file ({exc})") from None
                files = sorted(dict.fromkeys(weight_map.values()), key=natural_key)
                break
            if (self.dir / single).is_file():
                files = [single]
                break
        if not files:
            stray = sorted(p.name for p in self.dir.glob("*") if p.suffix in (".safetensors", ".bin"))
            hint = f" (found {', '.join(stray)} but no index file)" if stray else ""
            wanted = " or ".join(s for _, s in layouts)
            raise WeightsError(f"no {what} weights in {self.dir}: expected {wanted}{hint}")
        missing = [f for f in files if not (self.dir / f).is_file()]
        if missing:
            raise WeightsError(f"{self.index_file}: lists {missing[0]}, which is missing from {self.dir}")
        self.files = [self.dir / f for f in files]
        self._weight_map = weight_map
        self._infos: dict[str, TensorInfo] | None = None
        self._open: tuple[Path, SafetensorsFile | TorchBinFile] | None = None

    @property
    def is_safetensors(self) -> bool:
        return all(f.suffix == ".safetensors" for f in self.files)

    def _reader(self, path: Path):
        if self._open is not None and self._open[0] == path:
            return self._open[1]
        self.close()
        r = open_weights(path)
        self._open = (path, r)
        return r

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def infos(self) -> dict[str, TensorInfo]:
        """name -> TensorInfo for every tensor, in file order; checked against the index file."""
        if self._infos is None:
            infos: dict[str, TensorInfo] = {}
            for f in self.files:
                r = self._reader(f)
                for name in r.names():
                    if name in infos:
                        raise WeightsError(f"tensor {name!r} appears in both {infos[name].file.name} and {f.name}")
                    infos[name] = r.info(name)
                if not self.is_safetensors:
                    self.close()  # metadata kept; the mapping is reopened when tensors are read
            if self._weight_map is not None:
                for name, fname in self._weight_map.items():
                    if name not in infos:
                        raise WeightsError(
                            f"{self.index_file.name} maps tensor {name!r} to {fname}, "
                            "which does not contain it (corrupt or mismatched index)"
                        )
                    if infos[name].file.name != fname:
                        raise WeightsError(
                            f"{self.index_file.name} maps tensor {name!r} to {fname}, "
                            f"but it is in {infos[name].file.name}"
                        )
                extra = [n for n in infos if n not in self._weight_map]
                if extra:
                    raise WeightsError(
                        f"tensor {extra[0]!r} in {infos[extra[0]].file.name} is not listed in "
                        f"{self.index_file.name} ({len(extra)} unlisted)"
                    )
            self._infos = infos
        return self._infos

    def names(self) -> list[str]:
        return list(self.infos())

    def shards(self) -> list[list[str]]:
        """Tensor names grouped per file, in file order."""
        groups: dict[Path, list[str]] = {f: [] for f in self.files}
        for name, ti in self.infos().items():
            groups[ti.file].append(name)
        return [groups[f] for f in self.files]

    def read(self, name: str) -> torch.Tensor:
        ti = self.infos()[name]
        return self._reader(ti.file).read(name)

    def iter_chunks(self, name: str, n: int) -> Iterator[tuple[int, torch.Tensor]]:
        """The tensor as flat chunks of ``n`` elements, never whole in memory (see the readers)."""
        ti = self.infos()[name]
        return self._reader(ti.file).iter_chunks(name, n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch single-threaded for the duration: the toolkit's loops issue thousands of small
    memory-bound ops, and OpenMP's per-op thread hand-off costs far more than it gains (measured on
    a loaded 2-core box: 0.035 s with 1 thread vs 2.7 s with 2 for the same 32 M-element pass)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def check_out(out: str | Path, *inputs: str | Path) -> None:
    """Refuse an output directory that is or contains one of the inputs (it gets replaced)."""
    o = Path(out).resolve()
    for i in inputs:
        r = Path(i).resolve()
        if o == r or o in r.parents:
            raise WeightsError(f"--out {out} is also an input ({i}): it would be replaced; choose a new directory")


# The weight tools' name for atomic_dir: a staging sibling of ``out``, published on success.
staged_dir = atomic_dir


def copy_side_files(src: str | Path, dst: str | Path, names: Iterable[str] = SIDE_FILES) -> list[str]:
    copied = []
    for name in names:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def write_config(src: str | Path, dst: str | Path, dtype: torch.dtype | None = None, **updates) -> dict | None:
    """Copy config.json, recording the weights' dtype and any other updated keys."""
    f = Path(src) / "config.json"
    if not f.is_file():
        return None
    cfg = json.loads(f.read_text())
    if dtype is not None:
        for key in ("dtype", "torch_dtype"):
            if key in cfg or key == "dtype":
                cfg[key] = dtype_name(dtype)
    cfg.update(updates)
    (Path(dst) / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg


def sha256_file(path: str | Path, chunk: int = 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            k = fh.readinto(buf)
            if not k:
                break
            h.update(view[:k])
    return h.hexdigest()


def write_manifest(directory: str | Path, known: dict[str, str] | None = None) -> dict[str, str]:
    """``checksums.sha256`` (``sha256sum -c`` format) over every regular file in ``directory``."""
    directory = Path(directory)
    known = dict(known or {})
    sums = {}
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = f.relative_to(directory).as_posix()
        if rel == MANIFEST or rel.startswith(".cache/"):
            continue
        sums[rel] = known.get(rel) or sha256_file(f)
    (directory / MANIFEST).write_text("".join(f"{h}  {name}\n" for name, h in sums.items()))
    return sums


def read_manifest(directory: str | Path) -> dict[str, str] | None:
    f = Path(directory) / MANIFEST
    if not f.is_file():
        return None
    sums = {}
    for i, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line)
        if not m:
            raise WeightsError(f"{f}:{i}: not a sha256sum line: {line[:80]!r}")
        sums[m.group(2)] = m.group(1).lower()
    return sums


def check_manifest(directory: str | Path, only: Iterable[str] | None = None) -> list[str]:
    """Problems (one line each) found by re-hashing the files the manifest lists."""
    directory = Path(directory)
    sums = read_manifest(directory)
    if sums is None:
        return [f"no {MANIFEST} in {directory}"]
    wanted = set(only) if only is not None else None
    problems = []
    for rel, want in sums.items():
        if wanted is not None and rel not in wanted:
            continue
        f = directory / rel
        if not f.is_file():
            problems.append(f"{rel}: listed in {MANIFEST} but missing")
        elif sha256_file(f) != want:
            problems.append(f"{rel}: sha256 differs from {MANIFEST} (corrupted or modified)")
    return problems


_LAYER = re.compile(r"(\d+)")


def natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in _LAYER.split(name)]
