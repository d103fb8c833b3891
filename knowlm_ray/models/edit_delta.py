"""An edit to a model's weights, saved as low-rank deltas instead of a copy of the model.

An edit directory holds two files:

* ``edit.safetensors`` — per edited parameter ``NAME`` (``model.layers.5.mlp.down_proj.weight``)
  the factors ``NAME.u`` [out, r] and ``NAME.v`` [in, r], float32, with delta W = u @ v.T; and
  ``NAME.probe`` [out], the base weight times a fixed random vector (the fingerprint below).
* ``manifest.json`` — ``{"format": "knowlm-edit", "version": 1, "method", "settings", "requests",
  "base": {"config_sha256", "params": {NAME: {"sha256", "shape", "dtype", "edited_sha256",
  "norm"}}}, "created"}``.

Which base an edit belongs to. ``sha256`` is the hash of the base tensor's bytes in the dtype the
base model's files store it in (``dtype``), ``edited_sha256`` the same for base + delta (what
``merge-edit`` writes). A weight is recognised as the edit's base (or, for ``revert``, as carrying
the edit) by, in order:

1. the exact hash of the weight cast to the stored dtype — what a streamed merge and an in-memory
   model loaded in the file's dtype give;
2. else the fingerprint, within rounding: with a fixed Gaussian vector g (seed 0, length ``in``),
   ``probe = W_base @ g`` is stored; ``||W @ g - probe||`` estimates ``||W - W_base||_F``, and the
   weight is accepted when that is below ``4 * eps * (||W_base||_F + ||delta||_F)`` for the coarser
   of the stored and the in-memory dtype (rounding scales with the largest values computed: a model
   loaded in bf16 from fp32 files, a base recovered by ``revert`` within float rounding). Anything further off is another base, refused naming the parameter.

Applying computes in float32 and casts back to the parameter's dtype; edits applied one after
another compose (the second edit's base is the model after the first), and ``merge_edit`` with
several edits applies them in the order given, streaming the model one tensor at a time as
``merge-lora`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from knowlm_ray.atomic import atomic_dir, atomic_write_text
from knowlm_ray.models.checkpoint import (
    Checkpoint,
    WeightsError,
    _byte_view,
    check_out,
    copy_side_files,
    dtype_name,
    parse_dtype,
    single_threaded,
    staged_dir,
    write_config,
    write_manifest,
    write_shards,
)

FORMAT = "knowlm-edit"
VERSION = 1
WEIGHTS_FILE = "edit.safetensors"
MANIFEST_FILE = "manifest.json"
APPLIED_FILE = "edits.json"  # in a merged model folder: the edits it carries, in order
PROBE_SEED = 0
# config keys that change when a tool rewrites config.json without changing the model
_VOLATILE_CONFIG = ("dtype", "torch_dtype", "transformers_version", "_name_or_path", "architectures")


class EditError(WeightsError):
    """An edit that cannot be read or does not fit the model; the message names the file or parameter."""


@dataclass
class Edit:
    """An edit as read from its directory: the factors per parameter and the manifest."""

    dir: Path | None
    manifest: dict
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]]
    probes: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.deltas)

    @property
    def method(self) -> str:
        return str(self.manifest.get("method", ""))

    def param(self, name: str) -> dict:
        return self.manifest["base"]["params"][name]

    def delta(self, name: str) -> torch.Tensor:
        u, v = self.deltas[name]
        return u @ v.T

    def delta_norm(self, name: str) -> float:
        """||u @ v.T||_F without forming it: sqrt(trace((u^T u)(v^T v)))."""
        u, v = self.deltas[name]
        return float(torch.sqrt(torch.clamp(((u.T @ u) * (v.T @ v)).sum(), min=0)))

    def __str__(self) -> str:
        return str(self.dir) if self.dir is not None else f"<{self.method} edit>"


# ---------------------------------------------------------------------------- fingerprints
def tensor_sha256(t: torch.Tensor, dtype: torch.dtype | None = None) -> str:
    """sha256 of the tensor's bytes (C order) after casting to ``dtype``: the bytes a file stores."""
    t = t.detach().to("cpu")
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return hashlib.sha256(memoryview(_byte_view(t).numpy())).hexdigest()


def _probe_vector(n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(PROBE_SEED), dtype=torch.float32)


def probe(w: torch.Tensor) -> torch.Tensor:
    """``w @ g`` for the fixed Gaussian ``g``: ``||probe(a) - probe(b)|| ~ ||a - b||_F``."""
    w = w.detach().to("cpu", torch.float32)
    return w @ _probe_vector(w.shape[-1])


def _eps(*dtypes: torch.dtype) -> float:
    return max(torch.finfo(d).eps if d.is_floating_point else 1.0 for d in dtypes)


def config_sha256(config: Mapping | str | Path | None) -> str | None:
    """sha256 of a model's config.json with sorted keys, without the keys tools rewrite (dtype...)."""
    if config is None:
        return None
    if not isinstance(config, Mapping):
        f = Path(config)
        f = f / "config.json" if f.is_dir() else f
        if not f.is_file():
            return None
        config = json.loads(f.read_text())
    clean = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG}
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- the math
def add_delta(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """``w + sign * u @ v.T`` computed in float32 and cast back to ``w``'s dtype. The one place the
    update is computed, so an in-memory application and a streamed merge give the same bytes."""
    u = u.to(w.device, torch.float32)
    v = v.to(w.device, torch.float32)
    out = w.to(torch.float32) + sign * (u @ v.T)
    return out.to(w.dtype)


def _match(edit: Edit, name: str, w: torch.Tensor, *, edited: bool) -> tuple[bool, str]:
    """Is ``w`` this edit's base (``edited=False``) or base + delta (``edited=True``)? (ok, detail)."""
    info = edit.param(name)
    shape = list(info["shape"])
    if list(w.shape) != shape:
        return False, f"shape {list(w.shape)}, the edit's base has {shape}"
    stored = parse_dtype(info.get("dtype")) or torch.float32
    want = info["edited_sha256"] if edited else info["sha256"]
    if tensor_sha256(w, stored) == want:
        return True, "sha256"
    expect = edit.probes[name].clone()
    if edited:
        u, v = edit.deltas[name]
        expect += u @ (v.T @ _probe_vector(v.shape[0]))
    dist = float(torch.linalg.vector_norm(probe(w) - expect))
    norm = float(info.get("norm") or 0.0)
    tol = 4 * _eps(stored, w.dtype) * max(norm + edit.delta_norm(name), 1e-12)
    if dist <= tol:
        return True, "fingerprint"
    rel = dist / norm if norm else math.inf
    return False, f"differs by ~{rel:.2g} of its norm (sha256 and fingerprint both differ)"


def check_base(edit: Edit, name: str, w: torch.Tensor, *, edited: bool = False) -> str:
    """Raise EditError unless ``w`` is the edit's base for ``name`` (or carries the edit)."""
    ok, detail = _match(edit, name, w, edited=edited)
    if not ok:
        if edited:
            raise EditError(f"the model does not carry edit {edit}: {name} {detail}")
        raise EditError(
            f"edit {edit} was made on another base model: {name} {detail}. "
            "Apply it to the model it was made on (or after the edits it was made after)"
        )
    return detail


# ---------------------------------------------------------------------------- write / read
def write_edit(
    out_dir: str | Path,
    deltas: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    base_weights: Mapping[str, torch.Tensor],
    *,
    method: str,
    settings: dict,
    requests: list[dict],
    model_dir: str | Path | None,
) -> Path:
    """Write an edit directory atomically: the factors, the fingerprints and the manifest.

    ``base_weights[NAME]`` is the weight the delta was computed on (the model before the edit:
    after earlier edits when they were applied first); its hash is taken in the dtype the files of
    ``model_dir`` store that parameter in (the weight's own dtype when ``model_dir`` is None or
    lacks it), which is what a streamed merge of those files would hold.
    """
    from safetensors.torch import save_file

    if not deltas:
        raise EditError("an edit needs at least one changed parameter (no deltas given)")
    stored: dict[str, torch.dtype] = {}
    if model_dir is not None and Path(model_dir).is_dir():
        with contextlib.suppress(WeightsError), Checkpoint(model_dir) as ck:
            stored = {n: ti.dtype for n, ti in ck.infos().items()}
    tensors: dict[str, torch.Tensor] = {}
    params: dict[str, dict] = {}
    for name, (u, v) in deltas.items():
        if name not in base_weights:
            raise EditError(f"no base weight given for edited parameter {name}")
        w = base_weights[name].detach().to("cpu")
        u = u.detach().to("cpu", torch.float32).contiguous()
        v = v.detach().to("cpu", torch.float32).contiguous()
        if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1] or (u.shape[0], v.shape[0]) != tuple(w.shape):
            raise EditError(
                f"{name}: factors u {list(u.shape)} / v {list(v.shape)} do not make a delta of the weight's "
                f"shape {list(w.shape)} (u: [out, r], v: [in, r])"
            )
        dt = stored.get(name, w.dtype)
        base = w.to(dt)
        edited = add_delta(base, u, v)
        tensors[f"{name}.u"], tensors[f"{name}.v"] = u, v
        tensors[f"{name}.probe"] = probe(base)
        params[name] = {
            "sha256": tensor_sha256(base),
            "edited_sha256": tensor_sha256(edited),
            "shape": list(w.shape),
            "dtype": dtype_name(dt),
            "norm": float(torch.linalg.vector_norm(base.to(torch.float32))),
            "rank": int(u.shape[1]),
        }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "method": method,
        "settings": settings,
        "requests": requests,
        "base": {
            "model": str(model_dir) if model_dir is not None else None,
            "config_sha256": config_sha256(model_dir),
            "params": params,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return out


def read_edit(directory: str | Path) -> Edit:
    """Read an edit directory, refusing a missing or corrupt file with a message naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    if not d.is_dir():
        raise EditError(f"edit directory not found: {d}")
    mf, wf = d / MANIFEST_FILE, d / WEIGHTS_FILE
    for f in (mf, wf):
        if not f.is_file():
            raise EditError(f"{d} is not an edit: {f.name} is missing")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EditError(f"{mf}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EditError(f"{mf}: not a {FORMAT} manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise EditError(f"{mf}: version {manifest.get('version')!r} is not supported (this reads {VERSION})")
    params = (manifest.get("base") or {}).get("params")
    if not isinstance(params, dict) or not params:
        raise EditError(f"{mf}: base.params lists no edited parameters")
    try:
        tensors = load_file(str(wf))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EditError(f"{wf}: not a readable safetensors file ({exc})") from None
    deltas, probes = {}, {}
    for name, info in params.items():
        missing = [f"{name}.{k}" for k in ("u", "v", "probe") if f"{name}.{k}" not in tensors]
        if missing:
            raise EditError(f"{wf}: tensor {missing[0]} is missing (manifest lists {name})")
        for k in ("sha256", "edited_sha256", "shape", "dtype"):
            if k not in info:
                raise EditError(f"{mf}: base.params[{name!r}] has no {k!r}")
        u, v = tensors[f"{name}.u"].to(torch.float32), tensors[f"{name}.v"].to(torch.float32)
        if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1] or [u.shape[0], v.shape[0]] != list(info["shape"]):
            raise EditError(f"{wf}: {name}.u {list(u.shape)} / .v {list(v.shape)} do not fit shape {info['shape']}")
        deltas[name] = (u, v)
        probes[name] = tensors[f"{name}.probe"].to(torch.float32)
    return Edit(d, manifest, deltas, probes)


def _as_edit(edit: Edit | str | Path) -> Edit:
    return edit if isinstance(edit, Edit) else read_edit(edit)


# ---------------------------------------------------------------------------- in memory
def _param(model, name: str, edit: Edit) -> torch.nn.Parameter:
    try:
        return model.get_parameter(name)
    except AttributeError:
        raise EditError(f"edit {edit} changes {name}, which the model does not have") from None


@torch.no_grad()
def _apply_in_memory(model, edit: Edit, sign: float) -> dict[str, str]:
    params = {name: _param(model, name, edit) for name in edit.names}
    # check every parameter before changing any, so a refusal leaves the model as it was
    how = {name: check_base(edit, name, p.data, edited=sign < 0) for name, p in params.items()}
    for name, p in params.items():
        u, v = edit.deltas[name]
        p.data.copy_(add_delta(p.data, u, v, sign))
    return how


def apply_edit(model, edit: Edit | str | Path) -> dict[str, str]:
    """Add the edit's deltas to ``model``'s parameters in place, after checking each is the edit's
    base; returns how each was recognised (``sha256`` or ``fingerprint``)."""
    return _apply_in_memory(model, _as_edit(edit), 1.0)


def revert_edit(model, edit: Edit | str | Path) -> dict[str, str]:
    """Subtract the edit's deltas from ``model`` in place; refuses a model that does not carry it."""
    return _apply_in_memory(model, _as_edit(edit), -1.0)


# ---------------------------------------------------------------------------- streamed
def _applied_list(model_dir: Path) -> list[dict]:
    f = model_dir / APPLIED_FILE
    if not f.is_file():
        return []
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError:
        return []
    return list(data.get("edits", [])) if isinstance(data, dict) else []


def _edit_id(edit: Edit) -> dict:
    from knowlm_ray.models.checkpoint import sha256_file

    return {
        "edit": str(edit.dir),
        "method": edit.method,
        "sha256": sha256_file(edit.dir / WEIGHTS_FILE) if edit.dir else None,
        "params": edit.names,
    }


@single_threaded()
def _stream(base: Path, edits: list[Edit], out: Path, sign: float, dtype: str | None) -> Path:
    check_out(out, base, *[e.dir for e in edits if e.dir is not None])
    if not (base / "config.json").is_file():
        raise EditError(f"model not found: {base} has no config.json")
    out_dtype = parse_dtype(dtype)
    with Checkpoint(base, what="model") as B:
        infos = B.infos()
        for e in edits:
            for name in e.names:
                if name not in infos:
                    raise EditError(f"edit {e} changes {name}, which the model in {base} does not have")
        if sign > 0:
            have = config_sha256(base)
            want = edits[0].manifest["base"].get("config_sha256")
            if have and want and have != want:
                import warnings

                warnings.warn(f"{base}/config.json differs from the config edit {edits[0]} was made on", stacklevel=3)

        def produce(name: str, _dt):
            w = B.read(name)
            for e in edits:
                if name in e.deltas:
                    check_base(e, name, w, edited=sign < 0)
                    u, v = e.deltas[name]
                    w = add_delta(w, u, v, sign)
            return w

        shards = [[(n, out_dtype or infos[n].dtype, infos[n].shape) for n in names] for names in B.shards()]
        with staged_dir(out) as tmp:
            sums = write_shards(tmp, shards, produce)
            first = next((p[0][1] for p in shards if p), None)
            write_config(base, tmp, dtype=first)
            copy_side_files(base, tmp)
            applied = _applied_list(base)
            if sign > 0:
                applied += [_edit_id(e) for e in edits]
            else:
                gone = {_edit_id(e)["sha256"] for e in edits}
                applied = [a for a in applied if a.get("sha256") not in gone]
            if applied:
                atomic_write_text(tmp / APPLIED_FILE, json.dumps({"edits": applied}, indent=2) + "\n")
            write_manifest(tmp, sums)
    return out


def merge_edit(
    base_dir: str | Path, edit_dirs: Sequence[str | Path] | str | Path, out_dir: str | Path, dtype: str | None = None
) -> Path:
    """base model + edit(s), applied in the order given, -> a model folder written atomically.

    Streams the base one tensor at a time (memory: a tensor plus the factors); untouched tensors
    pass through unchanged; each edited tensor is checked against the edit's base first.
    ``edits.json`` in the output lists the edits the folder carries.
    """
    dirs = [edit_dirs] if isinstance(edit_dirs, (str, Path)) else list(edit_dirs)
    if not dirs:
        raise EditError("no edit given: pass at least one --edit")
    return _stream(Path(base_dir), [read_edit(d) for d in dirs], Path(out_dir), 1.0, dtype)


def revert_edit_dir(model_dir: str | Path, edit_dir: str | Path, out_dir: str | Path) -> Path:
    """A model folder carrying an edit -> the same model with the edit removed (streamed, atomic);
    refuses a model that does not carry the edit, naming the parameter."""
    return _stream(Path(model_dir), [read_edit(edit_dir)], Path(out_dir), -1.0, None)
