"""Model evaluation: extraction P/R/F1 on a gold IE file, and perplexity on corpus shards.

    python jobs/evaluate.py --config jobs/configs/tiny_eval.yaml [key.path=value ...]

Extraction runs the same path as ``/extract`` and ``batch_extract`` (fixed template, schema
batches, text chunks, tolerant parsing, schema check) over every gold record and task, with the
gold's language section of the schema (or, without a schema, the labels the gold uses), and scores
with ``knowlm_ray.ie.scorer``. Perplexity is exp(mean token negative log-likelihood) over the
shards' ``input_ids`` (each row cut to the model's context; the first token of a row is not
predicted). With ``edit``, EasyEdit's editing metrics on edit requests before and after an edit
(``knowlm_ray.edit.evaluation``, as ``knowlm edit eval``) go into the report as ``editing``.
Writes ``out_dir/predictions.jsonl`` and ``out_dir/report.json`` (atomically).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from knowlm_ray.config import ConfigError, EvaluateConfig


def evaluate_extraction(
    gold: Sequence[dict],
    schema: dict[str, Any],
    generate_fn: Callable,
    *,
    tasks: Sequence[str] = ("ner", "re", "ee"),
    match: str = "set",
    docs_per_call: int = 8,
    fmt: str = "json",
    max_chars: int | None = 400,
    prompt_format: str | None = None,
    tokenizer: Any = None,
) -> tuple[list[dict], dict[str, Any]]:
    """(predicted records, scores per task) for gold IE records (each with ``lang``)."""
    from knowlm_ray.ie.batch import extract_documents
    from knowlm_ray.ie.scorer import score_records

    docs = [{"id": g["id"], "text": g["text"], "lang": g["lang"]} for g in gold]
    preds = extract_documents(
        docs,
        tasks,
        schema,
        generate_fn,
        docs_per_call=docs_per_call,
        fmt=fmt,
        max_chars=max_chars,
        prompt_format=prompt_format,
        tokenizer=tokenizer,
    )
    scores = {t: score_records(t, list(gold), preds, match) for t in tasks}
    return preds, scores


def perplexity(
    model: Any, rows: Sequence[Sequence[int]], *, batch_size: int = 8, max_len: int | None = None, pad_id: int = 0
) -> dict[str, Any]:
    """Token-level perplexity of ``model`` (an HF causal LM) on token-id rows."""
    import torch

    device = next(model.parameters()).device
    total_nll, total_tokens, used = 0.0, 0, 0
    rows = [list(r[:max_len] if max_len else r) for r in rows]
    rows = [r for r in rows if len(r) >= 2]
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = rows[i : i + batch_size]
            width = max(len(r) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for k, r in enumerate(batch):  # right padding: a causal model's real tokens never see it
                ids[k, : len(r)] = torch.tensor(r, dtype=torch.long)
                mask[k, : len(r)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target, keep = ids[:, 1:], mask[:, 1:].bool()
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            total_nll += float(nll[keep].sum())
            total_tokens += int(keep.sum())
            used += len(batch)
    mean = total_nll / total_tokens if total_tokens else float("nan")
    return {
        "rows": used,
        "tokens": total_tokens,
        "nll": mean,
        "perplexity": math.exp(mean) if total_tokens else float("nan"),
    }


def run(cfg: EvaluateConfig, progress: bool = True) -> dict[str, Any]:
    from knowlm_ray.generation.engine import GenerationEngine
    from knowlm_ray.ie.batch import _write_atomic, load_schema_spec, schema_from_gold
    from knowlm_ray.ie.extract import engine_generate_fn
    from knowlm_ray.ie.records import load_ie_records

    t0 = time.perf_counter()
    with _inputs("model"):
        engine = GenerationEngine(cfg.model, device=cfg.device, dtype=cfg.dtype)
    report: dict[str, Any] = {"model": cfg.model}
    out = Path(cfg.out_dir)
    if cfg.gold:
        with _inputs("gold"):
            gold = load_ie_records(cfg.gold)
        gold = gold[: cfg.limit] if cfg.limit else gold
        with _inputs("schema"):
            schema = load_schema_spec(cfg.schema_) if cfg.schema_ is not None else schema_from_gold(gold)
        gen = engine_generate_fn(engine, {"max_tokens": cfg.max_tokens})
        preds, scores = evaluate_extraction(
            gold,
            schema,
            gen,
            tasks=cfg.tasks,
            match=cfg.match,
            docs_per_call=cfg.docs_per_call,
            fmt=cfg.format,
            max_chars=cfg.max_chars,
            prompt_format=cfg.prompt_format,
            tokenizer=engine.tokenizer,
        )
        _write_atomic(
            out / "predictions.jsonl", lambda fh: fh.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in preds)
        )
        report["extraction"] = {"gold": cfg.gold, "documents": len(gold), "scores": scores}
        if progress:
            line = ", ".join(f"{t} F1 {_headline(s):.4f}" for t, s in scores.items())
            print(f"[evaluate] extraction on {len(gold)} gold records: {line}", file=sys.stderr)
    if cfg.shards:
        from knowlm_ray.corpus.shards import read_shards

        with _inputs("shards"):
            table = read_shards(cfg.shards)
        n = min(table.num_rows, cfg.ppl_max_rows) if cfg.ppl_max_rows else table.num_rows
        rows = table.column("input_ids").slice(0, n).to_pylist()
        pad = engine.tokenizer.pad_token_id or 0
        ppl = perplexity(engine.model, rows, batch_size=cfg.ppl_batch_size, max_len=engine.max_context, pad_id=pad)
        report["perplexity"] = {"shards": cfg.shards, **ppl}
        if progress:
            print(
                f"[evaluate] perplexity {ppl['perplexity']:.3f} over {ppl['tokens']} tokens ({ppl['rows']} rows)",
                file=sys.stderr,
            )
    if cfg.edit is not None:
        from knowlm_ray.edit.evaluation import evaluate_edit

        with _inputs("edit.requests"):
            report["editing"] = evaluate_edit(
                cfg.model,
                cfg.edit.requests,
                edit_dir=cfg.edit.edit,
                ike=cfg.edit.ike,
                device=cfg.device,
                dtype=cfg.dtype,
            )
        if progress:
            state = "after" if "after" in report["editing"] else "before"
            means = report["editing"][state]["means"]
            line = ", ".join(f"{k} {'-' if v is None else format(v, '.3f')}" for k, v in means.items())
            print(f"[evaluate] editing ({state}): {line}", file=sys.stderr)
    report["elapsed_s"] = round(time.perf_counter() - t0, 3)
    _write_atomic(out / "report.json", lambda fh: json.dump(report, fh, ensure_ascii=False, indent=1))
    return report


@contextmanager
def _inputs(key: str):
    """A bad input (missing path, malformed gold line) is a ConfigError naming the config key:
    one line and exit status 2 from ``runtime.run_job``, not a traceback."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _headline(scores: dict[str, Any]) -> float:
    """Micro F1 (EE: of arguments) for the one-line summary."""
    part = scores.get("argument", scores)
    return part["micro"]["f1"]
