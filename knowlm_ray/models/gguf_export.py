"""`knowlm weights export-gguf`: a LLaMA-family HF directory (or a LoRA adapter) -> one GGUF file
for llama.cpp, streamed a tensor at a time with the ``gguf`` package's writer (optional extra:
``pip install knowlm-ray[gguf]``).

Chinese-LLaMA-Alpaca deployed through llama.cpp (convert, then quantize); this writes what
llama.cpp's own ``convert_hf_to_gguf.py`` writes for ``LlamaForCausalLM``:
* metadata ``llama.*`` from config.json (context length, widths, heads, rope base/scaling,
  RMS eps) and ``general.file_type``;
* the vocabulary from the sentencepiece ``tokenizer.model`` (pieces, scores, token types:
  normal / unknown / control / unused / byte / user-defined), added tokens, padding pieces up to
  ``vocab_size``, and the special ids / add-bos flags (``gguf.SpecialVocab``);
* tensor names from ``gguf.get_tensor_name_map`` and the rotary permutation of ``q_proj`` /
  ``k_proj`` rows that llama.cpp's RoPE expects (HF stores the two halves of each head apart,
  llama.cpp interleaves them);
* ``f32``, ``f16`` (norms stay f32) or ``q8_0`` (2-D weights whose rows are a multiple of 32; the
  rest f16/f32), as llama.cpp's converter does.
A LoRA adapter becomes a llama.cpp adapter GGUF (``general.type = adapter``, ``.lora_a`` /
``.lora_b`` tensors, ``adapter.lora.alpha``), loadable with ``--lora`` next to the base GGUF.
The output file appears under its name only when complete.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from knowlm_ray.atomic import atomic_path
from knowlm_ray.models.checkpoint import ADAPTER_LAYOUTS, Checkpoint, WeightsError, single_threaded

LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")
OUTTYPES = ("f32", "f16", "q8_0")
SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise WeightsError("export-gguf needs the gguf package: pip install 'knowlm-ray[gguf]'") from None
    return gguf


def permute_qk(w, n_head: int):
    """HF (rotate_half) row order -> llama.cpp's interleaved RoPE row order (as convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w, n_head: int):
    """Inverse of ``permute_qk``."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permute_for_llama_cpp(t, hf_name: str, hp: dict):
    """q_proj / k_proj rows (of a weight or a LoRA B) into llama.cpp's order; other tensors as they are."""
    if hf_name.endswith("q_proj.weight"):
        return permute_qk(t, hp["n_head"])
    if hf_name.endswith("k_proj.weight"):
        return permute_qk(t, hp["n_kv"])
    return t


def _hparams(cfg: dict) -> dict:
    arch = (
        cfg.get("architectures")
        or [
            {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}.get(
                cfg.get("model_type"), f"model_type {cfg.get('model_type')!r}"
            )
        ]
    )[0]
    if arch not in LLAMA_ARCHITECTURES:
        raise WeightsError(
            f"export-gguf handles LLaMA-family models ({', '.join(LLAMA_ARCHITECTURES)}); "
            f"config.json says {arch}. Use llama.cpp's convert_hf_to_gguf.py for others"
        )
    if cfg.get("sliding_window") and arch == "MistralForCausalLM":
        raise WeightsError("sliding-window attention is not supported by this exporter")
    n_head = cfg["num_attention_heads"]
    hp = {
        "arch": arch,
        "n_layer": cfg["num_hidden_layers"],
        "n_embd": cfg["hidden_size"],
        "n_ff": cfg["intermediate_size"],
        "n_head": n_head,
        "n_kv": cfg.get("num_key_value_heads") or n_head,
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // n_head,
        "n_ctx": cfg.get("max_position_embeddings", 2048),
        "eps": cfg.get("rms_norm_eps", 1e-6),
        "vocab": cfg["vocab_size"],
    }
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    hp["rope_theta"] = float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    rtype = rope.get("rope_type") or rope.get("type") or "default"
    if rtype not in ("default", "linear"):
        raise WeightsError(f"rope type {rtype!r} is not supported by this exporter (default and linear are)")
    hp["rope_linear"] = float(rope["factor"]) if rtype == "linear" and rope.get("factor") else None
    return hp


def sentencepiece_vocab(model_dir: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """tokens, scores, types exactly as llama.cpp's converter builds them from tokenizer.model."""
    gguf = _gguf()
    from sentencepiece import SentencePieceProcessor

    path = model_dir / "tokenizer.model"
    if not path.is_file():
        raise WeightsError(
            f"{model_dir} has no tokenizer.model (the sentencepiece file llama.cpp's LLaMA vocab "
            "is built from): copy it from the base model"
        )
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(path))
    T = gguf.TokenType
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(T.UNUSED)] * vocab_size
    if sp.vocab_size() > vocab_size:
        raise WeightsError(f"tokenizer.model has {sp.vocab_size()} pieces but config vocab_size is {vocab_size}")
    for i in range(sp.vocab_size()):
        kind = T.NORMAL
        if sp.IsUnknown(i):
            kind = T.UNKNOWN
        elif sp.IsControl(i):
            kind = T.CONTROL
        elif sp.IsUnused(i):
            kind = T.UNUSED
        elif sp.IsByte(i):
            kind = T.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode("utf-8"), sp.GetScore(i), int(kind)
    added = model_dir / "added_tokens.json"
    if added.is_file():
        for text, tid in json.loads(added.read_text(encoding="utf-8")).items():
            if tid < vocab_size:
                tokens[tid], scores[tid], types[tid] = text.encode("utf-8"), -1000.0, int(T.USER_DEFINED)
    tcfg = model_dir / "tokenizer_config.json"
    if tcfg.is_file():
        for tid, data in (json.loads(tcfg.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}).items():
            tid = int(tid)
            if tid >= vocab_size:
                continue
            text = data["content"]
            if data.get("special"):
                types[tid] = int(T.CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types[tid] = int(T.USER_DEFINED)
            tokens[tid], scores[tid] = text.encode("utf-8"), -1000.0
    return tokens, scores, types


def _tensor_type(gguf, name: str, shape: tuple[int, ...], outtype: str):
    Q = gguf.GGMLQuantizationType
    if outtype == "f32" or len(shape) <= 1 or name.endswith("_norm.weight"):
        return Q.F32
    if outtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return Q.Q8_0
    return Q.F16


def _convert(gguf, t, qtype):
    """torch tensor -> numpy array in the GGUF type (quantized: uint8 blocks)."""
    import numpy as np
    import torch

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return t.to(torch.float32).numpy()
    if qtype == Q.F16:
        return t.to(torch.float16).numpy()
    return gguf.quants.quantize(t.to(torch.float32).numpy().astype(np.float32, copy=False), qtype)


def _nbytes(gguf, shape, qtype) -> tuple[tuple[int, ...], object, int]:
    """(shape as add_tensor_info wants it, numpy dtype, bytes) for a tensor of ``shape`` in ``qtype``."""
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return tuple(shape), np.dtype(np.float32), 4 * math.prod(shape)
    if qtype == Q.F16:
        return tuple(shape), np.dtype(np.float16), 2 * math.prod(shape)
    bshape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
    return tuple(bshape), np.dtype(np.uint8), math.prod(bshape)


def _file_type(gguf, outtype: str) -> int:
    F = gguf.LlamaFileType
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0}[outtype]


def _write_streaming(gguf, out: Path, arch: str, add_kv, plan, produce) -> int:
    """Write ``plan`` [(gguf name, shape, qtype, source)] to ``out`` atomically; ``produce(item)``
    yields the numpy data of one tensor. Returns the file size."""
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            add_kv(writer)
            for gname, shape, qtype, _src in plan:
                ishape, dtype, nbytes = _nbytes(gguf, shape, qtype)
                writer.add_tensor_info(gname, ishape, dtype, nbytes, raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for item in plan:
                writer.write_tensor_data(produce(item))
        finally:
            writer.close()  # before the rename: the file is complete only once closed
    return out.stat().st_size


def _common_kv(gguf, w, hp: dict, name: str) -> None:
    w.add_name(name)
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_kv"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_rope_freq_base(hp["rope_theta"])
    if hp["rope_linear"]:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(hp["rope_linear"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_vocab_size(hp["vocab"])


def _map_name(tmap, hf_name: str) -> str:
    g = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if g is None:
        raise WeightsError(f"tensor {hf_name} has no llama.cpp name: not a plain LLaMA checkpoint?")
    return g


@single_threaded()
def export_gguf(model: str | Path, out: str | Path, outtype: str = "f16", name: str | None = None) -> dict:
    """HF LLaMA directory -> GGUF file (f32 / f16 / q8_0), one tensor in memory at a time."""
    gguf = _gguf()
    t0 = time.perf_counter()
    if outtype not in OUTTYPES:
        raise WeightsError(f"--outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    model, out = Path(model), Path(out)
    if not (model / "config.json").is_file():
        raise WeightsError(f"model not found: {model} has no config.json")
    cfg = json.loads((model / "config.json").read_text())
    hp = _hparams(cfg)
    tokens, scores, types = sentencepiece_vocab(model, hp["vocab"])
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["n_layer"])
    with Checkpoint(model) as ckpt:
        plan = []
        for hf_name, ti in ckpt.infos().items():
            if SKIP.search(hf_name):
                continue
            gname = _map_name(tmap, hf_name)
            plan.append((gname, ti.shape, _tensor_type(gguf, gname, ti.shape, outtype), hf_name))
        # llama.cpp's order: as the converter emits them (token_embd, blocks in order, output)
        order = {"token_embd.weight": (-1,), "output_norm.weight": (1 << 30,), "output.weight": ((1 << 30) + 1,)}
        plan.sort(key=lambda p: order.get(p[0]) or (int(p[0].split(".")[1]), p[0]))

        n_params = sum(ti.numel for n, ti in ckpt.infos().items() if not SKIP.search(n))

        def add_kv(w):
            w.add_type(gguf.GGUFType.MODEL)
            _common_kv(gguf, w, hp, name or model.name)
            w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
            w.add_file_type(_file_type(gguf, outtype))
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            w.add_tokenizer_model("llama")
            w.add_tokenizer_pre("default")
            w.add_token_list(tokens)
            w.add_token_scores(scores)
            w.add_token_types(types)
            tcfg = model / "tokenizer_config.json"
            if tcfg.is_file():
                aps = json.loads(tcfg.read_text(encoding="utf-8")).get("add_prefix_space")
                if aps is not None:
                    w.add_add_space_prefix(aps)
            gguf.SpecialVocab(model, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

        def produce(item):
            gname, _shape, qtype, hf_name = item
            return _convert(gguf, _permute_for_llama_cpp(ckpt.read(hf_name), hf_name, hp), qtype)

        size = _write_streaming(gguf, out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA], add_kv, plan, produce)
    return {
        "out": str(out),
        "outtype": outtype,
        "tensors": len(plan),
        "bytes": size,
        "vocab": len(tokens),
        "seconds": round(time.perf_counter() - t0, 3),
    }


LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<kind>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


@single_threaded()
def export_lora_gguf(adapter: str | Path, base: str | Path, out: str | Path, outtype: str = "f16") -> dict:
    """peft LoRA adapter (on a LLaMA base) -> llama.cpp LoRA adapter GGUF (as convert_lora_to_gguf.py)."""
    import torch

    gguf = _gguf()
    t0 = time.perf_counter()
    adapter, base, out = Path(adapter), Path(base), Path(out)
    if outtype not in OUTTYPES:
        raise WeightsError(f"--outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    acfg_path = adapter / "adapter_config.json"
    if not acfg_path.is_file():
        raise WeightsError(f"LoRA adapter not found: {adapter} has no adapter_config.json")
    acfg = json.loads(acfg_path.read_text())
    if not (base / "config.json").is_file():
        raise WeightsError(f"base model not found: {base} has no config.json")
    hp = _hparams(json.loads((base / "config.json").read_text()))
    for key, what in (
        ("use_rslora", "rsLoRA"),
        ("use_dora", "DoRA"),
        ("alpha_pattern", "alpha_pattern"),
        ("modules_to_save", "modules_to_save"),
        ("fan_in_fan_out", "fan_in_fan_out"),
    ):
        if acfg.get(key):
            raise WeightsError(
                f"the adapter uses {what}, which llama.cpp LoRA GGUF cannot express: merge it "
                "(knowlm weights merge-lora) and export the merged model instead"
            )
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["n_layer"])
    with Checkpoint(adapter, ADAPTER_LAYOUTS, what="LoRA adapter") as ckpt:
        infos = ckpt.infos()
        pairs: dict[str, dict[str, str]] = {}
        for n in infos:
            m = LORA_KEY.match(n)
            if not m:
                raise WeightsError(
                    f"adapter tensor {n} is not a LoRA A/B matrix of a linear layer "
                    "(embeddings / saved modules: merge and export the model instead)"
                )
            pairs.setdefault(m["module"] + ".weight", {})[m["kind"]] = n
        if not pairs:
            raise WeightsError(f"adapter {adapter} holds no LoRA matrices")
        plan = []
        for hf_name, ab in sorted(pairs.items()):
            if set(ab) != {"lora_A", "lora_B"}:
                raise WeightsError(f"adapter has only {', '.join(ab)} for {hf_name}")
            gname = _map_name(tmap, hf_name)
            if any(infos[x].numel == 0 for x in ab.values()):
                raise WeightsError(f"adapter holds empty tensors for {hf_name}: a ZeRO-3 save of partitioned shards?")
            a_shape, b_shape = infos[ab["lora_A"]].shape, infos[ab["lora_B"]].shape
            for suffix, kind, shape in ((".lora_a", "lora_A", a_shape), (".lora_b", "lora_B", b_shape)):
                qt = gguf.GGMLQuantizationType.F32 if outtype == "f32" else gguf.GGMLQuantizationType.F16
                plan.append((gname + suffix, shape, qt, (hf_name, ab[kind], kind)))

        def add_kv(w):
            w.add_type(gguf.GGUFType.ADAPTER)
            w.add_string(gguf.Keys.Adapter.TYPE, "lora")
            w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(acfg.get("lora_alpha", acfg.get("r", 8))))
            w.add_name(adapter.name)

        def produce(item):
            _gname, _shape, qtype, (hf_name, src, kind) = item
            t = ckpt.read(src).to(torch.float32)
            if kind == "lora_B":  # B's rows are the layer's output rows: permuted like the base q/k weights
                t = _permute_for_llama_cpp(t, hf_name, hp)
            return _convert(gguf, t, qtype)

        size = _write_streaming(gguf, out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA], add_kv, plan, produce)
    return {
        "out": str(out),
        "tensors": len(plan),
        "bytes": size,
        "alpha": acfg.get("lora_alpha"),
        "r": acfg.get("r"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
