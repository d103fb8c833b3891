"""Fold a peft LoRA adapter into its base model, one tensor at a time, and save a plain HF directory.

KnowLM's ``export_hf_checkpoint.py`` (and peft's ``merge_and_unload``) load the whole base model;
Chinese-LLaMA-Alpaca's ``merge_llama_with_chinese_lora_low_mem.py`` showed the streaming way. Here
the base model is read one tensor at a time (``checkpoint.Checkpoint``), each LoRA target gets
``W += (alpha / r) * B @ A`` (``alpha / sqrt(r)`` with rsLoRA; transposed for ``fan_in_fan_out``
layers and for embeddings, as peft does), tensors the adapter saved whole (``modules_to_save``,
resized embeddings) replace the base's, and every output tensor is streamed to disk. Peak memory:
a few tensors, not the model. Several adapters (``--lora L1 --lora L2``) are folded in that order in
the same single pass, each onto the result of the ones before, as peft's merge_and_unload applied
once per adapter would.

Refused with a message naming the tensor: an adapter without LoRA weights or with empty tensors
(the 443-byte ``adapter_model.bin`` of alpaca-lora's state_dict patch, a ZeRO-3 save of shards),
a target the base lacks or with the wrong shape (wrong base model), a tokenizer with more tokens
than the merged model has embedding rows (Chinese-LLaMA-Alpaca's 32000 / 49953 mix-ups), an
adapter that resized the vocabulary without shipping its tokenizer, and adapter features the
plain formula does not cover (DoRA, LoRA biases, trainable tokens...). More rows than tokens is
accepted: vocabularies padded to a round size are normal (Qwen2: 151,936 rows, 151,665 tokens).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from knowlm_ray.models.checkpoint import (
    ADAPTER_LAYOUTS,
    TOKENIZER_FILES,
    Checkpoint,
    WeightsError,
    check_out,
    copy_side_files,
    parse_dtype,
    single_threaded,
    staged_dir,
    write_config,
    write_manifest,
    write_shards,
)


class MergeError(WeightsError):
    pass


def copy_tokenizer(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer files that exist in ``src`` to ``dst``; returns the names copied."""
    return copy_side_files(src, dst, TOKENIZER_FILES)


# adapter options whose effect is not W += scale * B @ A (config key -> what it is)
UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA biases",
    "trainable_token_indices": "trainable tokens",
    "layer_replication": "layer replication",
    "target_parameters": "parameter targets",
    "use_qalora": "QA-LoRA",
    "use_bdlora": "BD-LoRA",
    "arrow_config": "Arrow routing",
    "alora_invocation_tokens": "activated LoRA",
}
LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|"
    r"lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$"
)
VOCAB_TENSORS = re.compile(r"(^|\.)(embed_tokens|lm_head|wte|word_embeddings|embed_in|embed_out)\.weight$")


def _check_inputs(base: Path, lora: Path) -> dict:
    if not (base / "config.json").is_file():
        raise MergeError(f"base model not found: {base} has no config.json")
    cfg_path = lora / "adapter_config.json"
    if not cfg_path.is_file():
        raise MergeError(f"LoRA adapter not found: {lora} has no adapter_config.json")
    if not any(
        (lora / n).is_file()
        for n in ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.safetensors.index.json")
    ):
        raise MergeError(f"LoRA adapter {lora} has no adapter_model.safetensors")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise MergeError(f"{cfg_path}: not valid JSON ({exc})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not a LoRA adapter")
    used = [what for key, what in UNSUPPORTED.items() if cfg.get(key)]
    if used:
        raise MergeError(
            f"adapter {lora} uses {', '.join(used)}, which the streaming merge does not support: "
            "merge it with peft's merge_and_unload instead"
        )
    return cfg


@dataclass
class _Target:
    A: str | None = None
    B: str | None = None
    embedding: bool = False


@dataclass
class _Plan:
    lora: dict[str, _Target] = field(default_factory=dict)  # base tensor name -> adapter A/B names
    replace: dict[str, str] = field(default_factory=dict)  # base tensor name -> adapter tensor name


def _plan(adapter: Checkpoint, acfg: dict) -> _Plan:
    plan = _Plan()
    infos = adapter.infos()
    if not infos:
        raise MergeError(
            f"adapter {adapter.dir} holds no tensors (an empty adapter_model file: the known "
            "alpaca-lora state_dict patch bug)"
        )
    ranks: dict[str, tuple[int, str]] = {}
    empty = [n for n, ti in infos.items() if ti.numel == 0]
    if empty:
        raise MergeError(
            f"adapter {adapter.dir} holds empty tensors (e.g. {empty[0]}, shape {list(infos[empty[0]].shape)}"
            f"; {len(empty)} in all): a ZeRO-3 save of partitioned shards?"
        )
    for name in infos:
        m = LORA_KEY.match(name)
        if m:
            t = plan.lora.setdefault(f"{m['module']}.weight", _Target())
            kind = m["kind"]
            t.embedding = kind.startswith("lora_embedding")
            if kind.endswith("A"):
                t.A = name
            else:
                t.B = name
            continue
        if "lora_" in name or "magnitude" in name:
            raise MergeError(f"adapter tensor {name} is not a plain LoRA weight (DoRA or another variant?)")
        # a whole tensor: modules_to_save (trained copy) beats the plain key beats a saved base layer
        # (resized embeddings) beats original_module (the untouched base, used with the adapter off)
        target = re.sub(r"^base_model\.model\.", "", name)
        rank = 1
        for rk, seg in ((0, r"\.modules_to_save(\.[^.]+)?\."), (2, r"\.base_layer\."), (3, r"\.original_module\.")):
            if re.search(seg, target):
                target, rank = re.sub(seg, ".", target), rk
                break
        prev = ranks.get(target)
        if prev is not None and prev[0] == rank:
            raise MergeError(f"adapter tensors {prev[1]} and {name} both replace {target}")
        if prev is None or rank < prev[0]:
            ranks[target] = (rank, name)
    plan.replace = {target: name for target, (_rank, name) in ranks.items()}
    half = [n for n, t in plan.lora.items() if t.A is None or t.B is None]
    if half:
        raise MergeError(f"adapter has only one of lora_A / lora_B for {half[0]}: incomplete adapter file")
    if not plan.lora:
        warnings.warn(
            f"adapter {adapter.dir} has no LoRA matrices, only whole tensors ({', '.join(list(plan.replace)[:3])})",
            stacklevel=3,
        )
    return plan


def _alpha(acfg: dict, module: str) -> float:
    for key, value in (acfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return float(acfg.get("lora_alpha", acfg.get("r", 8)))


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))


def _tokenizer_size(tok_dir: Path) -> int | None:
    if not _has_tokenizer(tok_dir):
        return None
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tok_dir))


@dataclass
class _Adapter:
    """One adapter of the chain: its files, config and which base tensors it replaces or updates."""

    dir: Path
    cfg: dict
    ckpt: Checkpoint
    plan: _Plan = field(default_factory=_Plan)
    changed: bool = False  # some lora_B is non-zero

    def check_shapes(self, shapes: dict[str, tuple[int, ...]], base_names: set[str]) -> list[str]:
        """Problems fitting this adapter onto tensors of ``shapes``; updates ``shapes`` to what it leaves."""
        info = self.ckpt.infos()
        fan_in_fan_out = bool(self.cfg.get("fan_in_fan_out"))
        problems = []
        for target, src in self.plan.replace.items():
            if target not in base_names:
                problems.append(f"adapter tensor {src} replaces {target}, which the base model does not have")
                continue
            have, new = shapes[target], info[src].shape
            if have != new and not (VOCAB_TENSORS.search(target) and have[1:] == new[1:]):
                problems.append(f"adapter tensor {src} has shape {list(new)} but {target} in the base is {list(have)}")
            shapes[target] = new
        for target, t in self.plan.lora.items():
            if target not in base_names:
                problems.append(f"adapter targets {target}, which the base model does not have")
                continue
            a, b = info[t.A].shape, info[t.B].shape
            w = shapes[target]
            if t.embedding:  # lora_embedding_A: (r, num_embeddings), lora_embedding_B: (dim, r)
                want = (a[1], b[0]) if len(a) == 2 and len(b) == 2 and a[0] == b[1] else None
            elif len(a) == 2 and len(b) == 2 and a[0] == b[1]:
                want = (a[1], b[0]) if fan_in_fan_out else (b[0], a[1])
            else:
                want = None
            if want != tuple(w):
                problems.append(
                    f"LoRA matrices for {target} have shapes A {list(a)} / B {list(b)}, which do not fit "
                    f"the base tensor's {list(w)}"
                )
        return problems

    def add_lora(self, name: str, w):
        """``w`` (the tensor ``name`` so far) plus this adapter's ``scale * B @ A``."""
        import torch

        t = self.plan.lora.get(name)
        if t is None:
            return w
        a = self.ckpt.read(t.A).to(torch.float32)
        b = self.ckpt.read(t.B).to(torch.float32)
        r = a.shape[0]
        scale = _alpha(self.cfg, name[: -len(".weight")]) / (math.sqrt(r) if self.cfg.get("use_rslora") else r)
        self.changed = self.changed or bool(b.any())
        w = w.to(torch.float32) if w.dtype != torch.float32 else w
        if t.embedding or self.cfg.get("fan_in_fan_out"):
            w.addmm_(a.T, b.T, alpha=scale)  # (B @ A).T
        else:
            w.addmm_(b, a, alpha=scale)
        return w


def _as_paths(lora: str | Path | Sequence[str | Path]) -> list[Path]:
    paths = [Path(lora)] if isinstance(lora, (str, Path)) else [Path(x) for x in lora]
    if not paths:
        raise MergeError("no LoRA adapter given: pass at least one --lora")
    return paths


@single_threaded()
def merge_lora(
    base: str | Path, lora: str | Path | Sequence[str | Path], out: str | Path, dtype: str = "float32"
) -> Path:
    """base + adapter(s) -> merged HF dir (safetensors shards + index + tokenizer), written atomically.

    Several adapters are folded in the order given, each onto the result of the ones before (as
    peft's ``merge_and_unload`` once per adapter): each base tensor is read once, every adapter's
    update is added to it, and it is written out, so memory stays at a tensor plus its LoRA factors.
    """
    base, out = Path(base), Path(out)
    loras = _as_paths(lora)
    check_out(out, base, *loras)
    cfgs = [_check_inputs(base, d) for d in loras]
    out_dtype = parse_dtype(dtype)
    with contextlib.ExitStack() as stack:
        B = stack.enter_context(Checkpoint(base, what="base model"))
        adapters = [
            _Adapter(d, c, stack.enter_context(Checkpoint(d, ADAPTER_LAYOUTS, what=f"LoRA adapter {d}")))
            for d, c in zip(loras, cfgs)
        ]
        binfo = B.infos()
        shapes: dict[str, tuple[int, ...]] = {n: ti.shape for n, ti in binfo.items()}
        resized_by: Path | None = None  # the last adapter that changed the number of vocabulary rows
        for k, ad in enumerate(adapters):
            ad.plan = _plan(ad.ckpt, ad.cfg)
            rows_before = {n: shapes[n][0] for n in binfo if VOCAB_TENSORS.search(n)}
            problems = ad.check_shapes(shapes, set(binfo))
            if any(shapes[n][0] != r for n, r in rows_before.items()):
                resized_by = ad.dir
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                hint = (
                    "Is --base the model this adapter was trained on?"
                    if k == 0
                    else f"Was it trained on --base merged with the adapters before it "
                    f"({', '.join(str(a.dir) for a in adapters[:k])})?"
                )
                raise MergeError(f"adapter {ad.dir}: {'; '.join(problems[:3])}{more}. {hint}")

        # vocabulary: every vocab-sized tensor, the config and the tokenizer must agree
        cfg = json.loads((base / "config.json").read_text())
        v_base = cfg.get("vocab_size")
        vocab_rows = {n: shapes[n][0] for n in binfo if VOCAB_TENSORS.search(n)}
        v_out = v_base
        if vocab_rows:
            sizes = set(vocab_rows.values())
            if len(sizes) > 1:
                detail = ", ".join(f"{n}: {v}" for n, v in vocab_rows.items())
                raise MergeError(
                    f"the merged model would have inconsistent vocabulary sizes ({detail}): the adapter "
                    "must save every vocabulary-sized module (embed_tokens and lm_head) when it resizes them"
                )
            v_out = sizes.pop()
        # the tokenizer of the last adapter that ships one (it resized the vocabulary last), else the base's
        tok_dir = next((d for d in reversed(loras) if _has_tokenizer(d)), base)
        if resized_by is not None and not _has_tokenizer(resized_by):
            rows = ", ".join(f"{n}: {binfo[n].shape[0]} -> {shapes[n][0]}" for n in vocab_rows)
            raise MergeError(
                f"adapter {resized_by} resized the vocabulary ({rows} rows) but ships no tokenizer: "
                "save the tokenizer it was trained with into the adapter directory (tokenizer.save_pretrained)"
            )
        v_tok = _tokenizer_size(tok_dir)
        # more rows than tokens is normal (a vocabulary padded to a round size: Qwen2 has 151,936 rows
        # for 151,665 tokens); fewer means token ids without an embedding row
        if v_tok is not None and v_out is not None and v_tok > v_out:
            raise MergeError(
                f"the tokenizer in {tok_dir} has {v_tok} tokens but the merged model's embeddings have "
                f"{v_out} rows (base config vocab_size {v_base}): token ids {v_out} to {v_tok - 1} have no "
                "embedding row (mixing tokenizers gives garbage output). Use the tokenizer the adapter was trained with"
            )

        def produce(name: str, _dt):
            # start at the last adapter that saved this tensor whole (modules_to_save): what came before
            # it is overwritten, so it is never read
            last = max((k for k, ad in enumerate(adapters) if name in ad.plan.replace), default=None)
            w = B.read(name) if last is None else adapters[last].ckpt.read(adapters[last].plan.replace[name])
            for ad in adapters[last or 0 :]:
                w = ad.add_lora(name, w)
            return w

        shards = [[(n, out_dtype or binfo[n].dtype, shapes[n]) for n in names] for names in B.shards()]
        with staged_dir(out) as tmp:
            sums = write_shards(tmp, shards, produce)
            first = next((p[0][1] for p in shards if p), None)
            updates = {"vocab_size": v_out} if v_out is not None and v_out != v_base else {}
            write_config(base, tmp, dtype=first, **updates)
            copy_side_files(base, tmp, ("generation_config.json",))
            copy_tokenizer(tok_dir, tmp)
            write_manifest(tmp, sums)
    for ad in adapters:
        if ad.plan.lora and not ad.changed:
            warnings.warn(
                f"every lora_B matrix in {ad.dir} is zero: the merge changed nothing (an untrained adapter?)",
                stacklevel=2,
            )
    return out
