"""`knowlm weights verify DIR`: is this model directory whole, consistent and what we think it is?

Checks, without loading the weights into memory (transformers loads the skeleton on the ``meta``
device; the files' headers give shapes and dtypes):
* every weight file is readable and complete (headers, sizes, index file vs files);
* transformers' own loader finds no missing and no unexpected keys (``output_loading_info=True``)
  and every tensor has the shape the config implies; no tensor is empty (a ZeRO-3 shard save);
* the tokenizer loads, has no token beyond the config's ``vocab_size`` (more rows than tokens is
  padding, and fine), the embedding matrix has ``vocab_size`` rows, and its special ids are in range;
* ``checksums.sha256``, when present, matches the files (``--write-manifest`` writes it).
``--load`` additionally loads the real weights and runs one forward pass (finite logits);
``--scan`` reads every tensor and flags NaN/Inf or all-zero tensors.
Reports parameter count, dtypes, sizes and the sha256 of every file; problems make the exit
status non-zero.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from knowlm_ray.models.checkpoint import (
    MANIFEST,
    Checkpoint,
    WeightsError,
    check_manifest,
    dtype_name,
    read_manifest,
    sha256_file,
    write_manifest,
)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def verify(
    directory: str | Path,
    write: bool = False,
    load: bool = False,
    scan: bool = False,
    checksums: bool = True,
    allow_padded_vocab: bool = True,
    trust_remote_code: bool = False,
) -> dict:
    """Check a model directory; returns a report with a ``problems`` list (empty = healthy).

    More embedding rows than tokenizer tokens (a vocabulary padded to a round size, e.g. Qwen2's
    151,936 rows for 151,665 tokens) is a note, not a problem, as in ``merge-lora``; tokens without
    rows are a problem. ``allow_padded_vocab`` is kept for old callers and changes nothing."""
    import torch

    t0 = time.perf_counter()
    d = Path(directory)
    problems: list[str] = []
    notes: list[str] = []
    report: dict = {"dir": str(d), "problems": problems, "notes": notes}
    if not d.is_dir():
        raise WeightsError(f"model directory not found: {d}")
    if not (d / "config.json").is_file():
        problems.append("no config.json")
        return report

    # 1. the files themselves
    ckpt = None
    infos = {}
    try:
        ckpt = Checkpoint(d)
        infos = ckpt.infos()
    except WeightsError as exc:
        problems.append(str(exc))
    finally:
        if ckpt is not None:
            ckpt.close()
    empty = [n for n, ti in infos.items() if ti.numel == 0]
    if empty:
        problems.append(f"{len(empty)} empty tensors (e.g. {empty[0]}): a ZeRO-3 save of partitioned shards?")
    report["weights"] = {
        "files": [f.name for f in ckpt.files] if ckpt else [],
        "tensors": len(infos),
        "format": "safetensors" if ckpt and ckpt.is_safetensors else "pytorch .bin",
        "dtypes": dict(Counter(dtype_name(ti.dtype) for ti in infos.values())),
    }
    if ckpt and not ckpt.is_safetensors:
        notes.append("legacy pytorch .bin weights: `knowlm weights recover/merge-lora` write safetensors")

    # 2. what transformers makes of them (skeleton on the meta device: no weights in memory)
    cfg = model = None
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(d, trust_remote_code=trust_remote_code)
        if infos:
            model, info = AutoModelForCausalLM.from_pretrained(
                d,
                device_map="meta",
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                trust_remote_code=trust_remote_code,
            )
            for key in ("missing_keys", "unexpected_keys"):  # shapes: checked below, with the shapes named
                keys = sorted(map(str, info.get(key) or []))
                if keys:
                    problems.append(
                        f"{len(keys)} {key.replace('_', ' ')} when loading: {', '.join(keys[:5])}"
                        + (" ..." if len(keys) > 5 else "")
                    )
            for key in info.get("error_msgs") or []:
                problems.append(f"load error: {key}")
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            for name, ti in infos.items():
                if name in expected and expected[name] != ti.shape:
                    problems.append(
                        f"tensor {name} has shape {list(ti.shape)}, the config implies {list(expected[name])}"
                    )
            seen, n_params = set(), 0
            for p in model.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n_params += p.numel()
            report["parameters"] = n_params
            report["architecture"] = type(model).__name__
    except Exception as exc:  # noqa: BLE001 - any failure to build/load is the finding
        problems.append(
            f"transformers cannot load it: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )

    # 3. tokenizer vs config vs embeddings
    vocab = getattr(cfg, "vocab_size", None) if cfg is not None else None
    emb_rows = None
    if model is not None:
        emb = model.get_input_embeddings()
        emb_rows = emb.weight.shape[0] if emb is not None else None
        for name, p in model.named_parameters():
            if emb is not None and p is emb.weight and name in infos:
                emb_rows = infos[name].shape[0]
    report["vocab"] = {"config": vocab, "embedding_rows": emb_rows}
    tok_files = [f for f in ("tokenizer.json", "tokenizer.model", "vocab.json") if (d / f).is_file()]
    if not tok_files:
        problems.append("no tokenizer files (tokenizer.json / tokenizer.model)")
    else:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(d, trust_remote_code=trust_remote_code)
            n_tok = len(tok)
            report["vocab"]["tokenizer"] = n_tok
            if vocab is not None:
                if n_tok > vocab:
                    problems.append(
                        f"the tokenizer has {n_tok} tokens but config vocab_size is {vocab}: ids >= {vocab} "
                        "index past the embeddings (wrong tokenizer for this model?)"
                    )
                elif n_tok < vocab:  # padded to a round size: normal, as merge-lora accepts it
                    notes.append(
                        f"embeddings padded: {vocab - n_tok} rows beyond the tokenizer's {n_tok} tokens "
                        f"(vocab_size {vocab}; ids >= {n_tok} are never produced)"
                    )
            if emb_rows is not None and vocab is not None and emb_rows != vocab:
                problems.append(f"the embedding matrix has {emb_rows} rows but config vocab_size is {vocab}")
            for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
                tid = getattr(tok, attr, None)
                if isinstance(tid, int) and vocab is not None and not 0 <= tid < vocab:
                    problems.append(f"tokenizer {attr} {tid} is outside the vocabulary (size {vocab})")
            if not (d / "tokenizer.model").is_file():
                notes.append("no tokenizer.model (sentencepiece): export-gguf needs it for LLaMA models")
        except Exception as exc:  # noqa: BLE001
            problems.append(
                f"the tokenizer does not load: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )

    # 4. sizes and checksums
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.name != MANIFEST and ".cache" not in p.parts)
    report["size_bytes"] = sum(f.stat().st_size for f in files)
    report["size"] = _human(report["size_bytes"])
    if read_manifest(d) is not None:
        bad = check_manifest(d)
        problems.extend(bad)
        if not bad:
            notes.append(f"all files match {MANIFEST}")
        listed = set(read_manifest(d))
        unlisted = [f.relative_to(d).as_posix() for f in files if f.relative_to(d).as_posix() not in listed]
        if unlisted:
            notes.append(f"files not in {MANIFEST}: {', '.join(unlisted[:5])}")
    if write:
        report["sha256"] = write_manifest(d)
        notes.append(f"wrote {d / MANIFEST}")
    elif checksums:
        report["sha256"] = {f.relative_to(d).as_posix(): sha256_file(f) for f in files}

    # 5. optional: real load + forward, and a full scan of the values
    if load and not problems:
        try:
            from transformers import AutoModelForCausalLM

            m, info = AutoModelForCausalLM.from_pretrained(
                d, output_loading_info=True, trust_remote_code=trust_remote_code
            )
            for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
                if info.get(key):
                    problems.append(f"{key.replace('_', ' ')} on a real load: {sorted(map(str, info[key]))[:5]}")
            ids = torch.tensor([[getattr(m.config, "bos_token_id", None) or 1, 2, 3, 4]]) % (vocab or 5)
            with torch.no_grad():
                logits = m.eval()(ids).logits
            if not bool(torch.isfinite(logits).all()):
                problems.append("a forward pass gives NaN/Inf logits")
            else:
                notes.append("real load and one forward pass: OK")
            del m
        except Exception as exc:  # noqa: BLE001
            problems.append(f"real load failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if scan and infos:
        with Checkpoint(d) as c:
            for name in c.names():
                t = c.read(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    problems.append(f"tensor {name} has NaN/Inf values")
                elif t.numel() and not bool(t.any()):
                    problems.append(f"tensor {name} is all zeros")
                del t
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def summary_line(report: dict) -> str:
    w = report.get("weights", {})
    parts = [report["dir"]]
    if "parameters" in report:
        parts.append(f"{report['parameters']:,} parameters")
    if w.get("dtypes"):
        parts.append("/".join(w["dtypes"]))
    parts.append(report.get("size", "?"))
    v = report.get("vocab", {})
    if v.get("tokenizer") is not None:
        parts.append(f"vocab {v['tokenizer']} (config {v.get('config')})")
    status = "OK" if not report["problems"] else f"{len(report['problems'])} PROBLEM(S)"
    return f"{status}: " + ", ".join(parts)


def print_report(report: dict, stream=None) -> None:
    import sys

    out = stream or sys.stdout
    for p in report["problems"]:
        print(f"problem: {p}", file=out)
    for n in report["notes"]:
        print(f"note: {n}", file=out)
    shown = {k: v for k, v in report.items() if k not in ("problems", "notes", "sha256")}
    print(json.dumps(shown, indent=2, default=str), file=out)
    for name, h in (report.get("sha256") or {}).items():
        print(f"{h}  {name}", file=out)
    print(summary_line(report), file=out)
