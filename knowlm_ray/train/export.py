"""The job's final artefact in ``output_dir``: a Hugging Face model dir or a peft adapter dir.

Written to a staging dir next to ``output_dir`` and swapped in, so a reader never sees half a
model; ``metrics.jsonl`` is carried over. Every saved tensor is checked to be non-empty: under
ZeRO-3 a naive ``save_pretrained`` writes the local (0,)-shaped shards and only warns.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from knowlm_ray.models.checkpoint import TOKENIZER_FILES, copy_side_files
from knowlm_ray.models.publish import publish_dir, staging_dir


class ExportError(RuntimeError):
    pass


def copy_tokenizer(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer files of a model dir; a model without a tokenizer is an error here."""
    copied = copy_side_files(src, dst, TOKENIZER_FILES)
    if not copied:
        raise ExportError(f"no tokenizer files in {src} (expected tokenizer.json or tokenizer.model)")
    return copied


def saved_tensor_shapes(directory: str | Path, prefix: str = "model") -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor in ``{prefix}*.safetensors`` (headers only, no data read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    files = sorted(Path(directory).glob(f"{prefix}*.safetensors"))
    if not files:
        raise ExportError(f"no {prefix}*.safetensors written in {directory}")
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                shapes[key] = tuple(fh.get_slice(key).get_shape())
    return shapes


def check_nonempty(shapes: dict[str, tuple[int, ...]], where: str) -> None:
    if not shapes:
        raise ExportError(f"{where}: no tensors were saved")
    empty = [k for k, s in shapes.items() if math.prod(s) == 0]
    if empty:
        raise ExportError(
            f"{where}: {len(empty)} saved tensor(s) are empty, e.g. {empty[:3]} "
            "(ZeRO-3 shards saved without gathering?)"
        )


def check_full_model(saved: dict[str, tuple[int, ...]], state_dict: dict, where: str) -> None:
    """Every tensor of the consolidated state dict was saved whole (tied duplicates may be dropped)."""
    check_nonempty(saved, where)
    ptrs = {state_dict[k].data_ptr() for k in saved if k in state_dict}
    missing = [k for k, v in state_dict.items() if k not in saved and v.data_ptr() not in ptrs]
    unexpected = [k for k in saved if k not in state_dict]
    wrong = [k for k in saved if k in state_dict and tuple(state_dict[k].shape) != saved[k]]
    if missing or unexpected or wrong:
        raise ExportError(
            f"{where}: saved weights do not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )


def write_full_model(module, state_dict: dict, base_dir: str | Path, output_dir: str | Path) -> Path:
    """Rank 0: an HF dir (config, generation config, safetensors, tokenizer) from a whole state dict."""
    expected = {n for n, _ in module.named_parameters()}
    lost = sorted(expected - set(state_dict))
    if lost:
        raise ExportError(f"consolidated state dict lacks parameters {lost[:5]}")
    check_nonempty({k: tuple(v.shape) for k, v in state_dict.items()}, "consolidated state dict")
    stage = staging_dir(output_dir)
    try:
        module.save_pretrained(stage, state_dict=state_dict, safe_serialization=True)
        check_full_model(saved_tensor_shapes(stage, "model"), state_dict, str(output_dir))
        copy_tokenizer(base_dir, stage)
        return publish_dir(stage, output_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def write_adapter(peft_model, base_dir: str | Path, output_dir: str | Path) -> Path:
    """Rank 0, inside ``GatheredParameters`` under ZeRO-3: a peft adapter dir + tokenizer files."""
    stage = staging_dir(output_dir)
    try:
        for cfg in peft_model.peft_config.values():
            cfg.base_model_name_or_path = str(base_dir)
        peft_model.save_pretrained(stage, safe_serialization=True)
        check_nonempty(saved_tensor_shapes(stage, "adapter_model"), f"LoRA adapter for {output_dir}")
        acfg = json.loads((stage / "adapter_config.json").read_text(encoding="utf-8"))
        if acfg.get("base_model_name_or_path") != str(base_dir):
            named = acfg.get("base_model_name_or_path")
            raise ExportError(f"adapter_config.json names base {named!r}, not {base_dir}")
        copy_tokenizer(base_dir, stage)
        return publish_dir(stage, output_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
