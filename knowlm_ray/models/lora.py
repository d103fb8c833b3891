"""Fold a peft LoRA adapter into its base model and save a plain Hugging Face directory."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


class MergeError(ValueError):
    pass


def copy_tokenizer(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer files that exist in ``src`` to ``dst``; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def _check_inputs(base: Path, lora: Path) -> dict:
    if not (base / "config.json").is_file():
        raise MergeError(f"base model not found: {base} has no config.json")
    cfg_path = lora / "adapter_config.json"
    if not cfg_path.is_file():
        raise MergeError(f"LoRA adapter not found: {lora} has no adapter_config.json")
    if not any((lora / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise MergeError(f"LoRA adapter {lora} has no adapter_model.safetensors")
    return json.loads(cfg_path.read_text())


def merge_lora(base: str | Path, lora: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """base + adapter -> merged HF dir (safetensors + tokenizer), written atomically."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, lora, out = Path(base), Path(lora), Path(out)
    _check_inputs(base, lora)
    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, low_cpu_mem_usage=True)
    # The adapter's tokenizer wins (a vocabulary-expanded adapter ships its own): sizes must agree.
    tok_dir = lora if (lora / "tokenizer_config.json").is_file() else base
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if len(tok) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    peft_model = PeftModel.from_pretrained(model, lora, is_trainable=False)
    missing = [k for k, v in peft_model.state_dict().items() if "lora_" in k and v.numel() == 0]
    if missing:
        raise MergeError(f"adapter {lora} holds empty LoRA tensors (e.g. {missing[0]}): a broken ZeRO-3 save?")
    merged = peft_model.merge_and_unload()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(tok_dir, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
