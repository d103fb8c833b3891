"""KG → IE instructions: alpaca records for NER / RE / EE, Chinese and English.

Input is IE records (DESIGN.md format plus ``"lang"``) and a closed label schema
(``{"zh": {"ner": [...], "re": [...], "ee": {type: [roles]}, "hard_negatives"?: {label: [labels]}},
"en": {...}}``). As in IEPile, the labels a prompt offers come in schema batches: a record's own
labels, their hard negatives (confusable labels: the schema's ``hard_negatives`` map, else the
labels that most often co-occur with them in other records) and randomly sampled other labels
(``neg_ratio``), shuffled and cut into batches of ``split_num`` (NER 6, RE / EE 4). Each batch is
one instruction; a batch holding none of the record's labels has the fixed none-answer (``无`` /
``None``), so the model learns to answer "nothing here" instead of inventing spans. A task the
record has no label for yields one all-negative batch when the record is a full negative, and
otherwise at ``neg_ratio``.

Answers come in two formats, as in KnowLM and IEPile: ``tuple`` — one ``(实体,实体类型)`` /
``(head,relation,tail)`` / ``(trigger,event type,[(argument,role)])`` per line — and ``json`` —
``{"type": [mentions]}``-style objects. ``parse_output`` reads either back into record lists.

``--serve-prompt`` writes instead the prompts ``/extract`` sends (``build_serve_instructions``);
``--format oneke`` writes IEPile training records in OneKE's prompt (``knowlm_ray.instruct.iepile``).

    python -m knowlm_ray.instruct.kg2instruct --records R --schema S --out O [--seed N]
        [--tasks ner,re,ee] [--lang zh|en] [--limit N] [--serve-prompt] [--format alpaca|oneke]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence

# The instruction text, answer formats, record loading and parsers live in ie: this builder
# writes training data in exactly the shapes extraction asks for and reads back.
from knowlm_ray.atomic import atomic_write_text, write_json_atomic
from knowlm_ray.ie.parsers import FIELD, FORMATS, TASKS
from knowlm_ray.ie.prompts import serve_format_instructions
from knowlm_ray.ie.records import load_ie_records, load_schema, schema_section
from knowlm_ray.ie.templates import FORMAT_TEXT, LANGS, NONE_ANSWER, TEMPLATES, render_output, tuple_safe
from knowlm_ray.instruct.batches import (
    check_ratio,
    check_tasks,
    item_label,
    label_batches,
    resolve_negatives,
    split_sizes_for,
)

# -------------------------------------------------------------------------------- rendering


def _batch_text(task: str, s: dict, batch: Sequence[str]) -> str:
    """The batch's labels as the instruction shows them (EE: ``{type: [roles]}``), order kept."""
    if task == "ee":
        return json.dumps({t: s["ee"][t] for t in batch}, ensure_ascii=False)
    return json.dumps(list(batch), ensure_ascii=False)


def build_instructions(
    records: Sequence[dict],
    schema: dict,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    neg_ratio: float = 0.15,
    split_num: dict[str, int] | int | None = None,
    hard_negatives: dict[str, dict[str, list[str]]] | None = None,
) -> list[dict]:
    """Alpaca dicts (+ ``task``, ``lang``, ``format``, ``id``, ``labels``) for ``records``.

    IEPile-style schema batches: for each (record, task) the candidate labels are the record's
    own labels (positives), its hard negatives (``hard_negatives[lang][positive]``, default: the
    schema section's ``"hard_negatives"`` if it has one, else :func:`cooccurrence_hard_negatives`
    of ``records``) and each other schema label with probability ``neg_ratio``; they are shuffled
    and cut into batches of ``split_num`` (NER 6, RE / EE 4; the remainder rule of
    ``knowlm_ray.ie.prompts.split_sizes``). Each batch is one instruction whose answer holds the
    record's items with a label of the batch — the none-answer when there are none. A task the
    record has no label for yields one all-negative batch when the record is a full negative,
    and otherwise at ``neg_ratio``. One private seeded stream: same seed, same list.
    """
    check_tasks(tasks)
    check_ratio(neg_ratio)
    sizes = split_sizes_for(split_num)
    hard_negatives = resolve_negatives(records, schema, hard_negatives)
    rng = random.Random(seed)  # one private stream: never the global random state
    out = []
    for rec in records:
        lang, s = schema_section(rec, schema)
        fmt = rng.choice(FORMATS)  # one format per record
        negative = not any(rec.get(FIELD[t]) for t in TASKS)
        for task in tasks:
            items = rec.get(FIELD[task]) or []
            hard_map = hard_negatives.get(lang, {})
            for batch in label_batches(rec, task, s, rng, sizes[task], neg_ratio, hard_map, negative):
                batch_items = [x for x in items if item_label(task, x) in batch]
                task_fmt = "json" if fmt == "tuple" and not tuple_safe(batch_items) else fmt
                template = rng.choice(TEMPLATES[task][lang])
                instruction = template.format(
                    schema=_batch_text(task, s, batch), fmt=FORMAT_TEXT[(task, task_fmt)][lang]
                )
                out.append(
                    {
                        "instruction": instruction,
                        "input": rec["text"],
                        "output": render_output(task, lang, task_fmt, batch_items, batch),
                        "task": task,
                        "lang": lang,
                        "format": task_fmt,
                        "id": rec["id"],
                        "labels": list(batch),
                    }
                )
    return out


def build_serve_instructions(
    records: Sequence[dict],
    schema: dict,
    tasks: Sequence[str] = TASKS,
    prompt_format: str = "alpaca",
    tokenizer=None,
) -> list[dict]:
    """Alpaca dicts asking exactly what ``/extract`` asks (``knowlm_ray.ie.prompts``'s fixed
    template, JSON answers, the schema's whole label list in its order, cut into the same schema
    batches and text chunks), one per (record, task, prompt). No template, order or format
    variety and no sampled negatives: rows for a model that only has to learn the serving prompt
    (the demo's tiny model), not the task in general (``build_instructions``).

    ``prompt_format`` (``knowlm_ray.ie.formats``) other than ``alpaca``: the rows ask in that
    format, so a LoRA trained on them is asked at serving time exactly as it was taught
    (``formats.serve_rows``; zhixi: alpaca rows; oneke: IEPile records; chat: rows with the
    rendered ``prompt``, which needs the model's ``tokenizer``)."""
    check_tasks(tasks)
    if prompt_format != "alpaca":
        from knowlm_ray.ie.formats import get_format, serve_rows

        if get_format(prompt_format).needs_tokenizer and tokenizer is None:
            raise ValueError(f"prompt format {prompt_format!r} needs the model's tokenizer")
    out = []
    for rec in records:
        lang, s = schema_section(rec, schema)
        for task in tasks:
            if prompt_format == "alpaca":
                out += serve_format_instructions([rec], task, s[task], lang)
            else:
                out += serve_rows([rec], task, s[task], lang, prompt_format=prompt_format, tokenizer=tokenizer)
    return out


# -------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kg2instruct", description=__doc__.split("\n")[0])
    ap.add_argument("--records", required=True, help="IE records, one JSON object per line")
    ap.add_argument("--schema", required=True, help="label schema JSON ({lang: {ner, re, ee}})")
    ap.add_argument("--out", required=True, help="output alpaca JSON list")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--neg-ratio",
        type=float,
        default=0.15,
        help="chance that a task with no labels still gets a none-answer instruction, and that "
        "each non-hard negative label joins a record's schema batches",
    )
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of ner,re,ee")
    ap.add_argument("--lang", choices=LANGS, help="only the records of this language")
    ap.add_argument("--limit", type=int, help="only the first N records (after --lang)")
    ap.add_argument(
        "--format",
        "--prompt-format",
        dest="format",
        choices=("alpaca", "zhixi", "oneke"),
        default="alpaca",
        help="the prompt format the rows ask in (knowlm serve --prompt-format), so a LoRA is trained in "
        "exactly its serving prompt. alpaca: this project's instructions (an alpaca JSON list); oneke: IEPile "
        "training records, one JSON object per line (OneKE's instruction JSON and answer: split_num labels "
        "per record in random order, with negatives; with --serve-prompt the whole schema in order); zhixi: "
        "KnowLM's ZhiXi prompts, with --serve-prompt only",
    )
    ap.add_argument(
        "--serve-prompt",
        action="store_true",
        help="write the prompts /extract sends (fixed template, whole schema in order) "
        "instead of varied templates, formats and sampled negatives",
    )
    args = ap.parse_args(argv)
    if args.format == "zhixi" and not args.serve_prompt:
        ap.error("--format zhixi writes the serving prompts: add --serve-prompt")
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit must be >= 1, got {args.limit}")
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    try:
        records = load_ie_records(args.records)
        if args.lang:
            records = [r for r in records if r["lang"] == args.lang]
        if args.limit is not None:
            records = records[: args.limit]
        schema = load_schema(args.schema)
        if args.serve_prompt:
            rows = build_serve_instructions(records, schema, tasks, prompt_format=args.format)
        elif args.format == "oneke":
            from knowlm_ray.instruct.iepile import build_iepile

            rows = build_iepile(records, schema, seed=args.seed, neg_ratio=args.neg_ratio, tasks=tasks)
        else:
            rows = build_instructions(records, schema, seed=args.seed, neg_ratio=args.neg_ratio, tasks=tasks)
    except ValueError as exc:  # RecordError is a ValueError: user-caused, one clear line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "oneke":
        atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        counts = {t: sum(r["task"].lower() == t for r in rows) for t in TASKS}
        print(
            f"wrote {len(rows)} IEPile records from {len(records)} records to {args.out} "
            f"(ner {counts['ner']}, re {counts['re']}, ee {counts['ee']})"
        )
        return 0
    write_json_atomic(rows, args.out)
    counts = {t: sum(r["task"] == t for r in rows) for t in TASKS}
    empty = sum(r["output"] == NONE_ANSWER[r["lang"]] for r in rows)
    print(
        f"wrote {len(rows)} instructions from {len(records)} records to {args.out} "
        f"(ner {counts['ner']}, re {counts['re']}, ee {counts['ee']}; none-answers {empty})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
