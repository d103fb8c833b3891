"""The schema batches an IE record is asked in, shared by the alpaca instruction builder
(``kg2instruct``) and the IEPile writer (``iepile``): the record's labels, their hard negatives and
sampled negatives, shuffled and cut IEPile's way. One seeded stream draws them all."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from knowlm_ray.ie.parsers import FIELD, TASKS
from knowlm_ray.ie.prompts import SPLIT_NUM, split_sizes
from knowlm_ray.ie.templates import guess_lang


def check_tasks(tasks: Sequence[str]) -> None:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} (expected {TASKS})")


def item_label(task: str, item: dict) -> str:
    return item["type"] if task in ("ner", "ee") else item["relation"]


def task_labels(task: str, s: dict) -> list[str]:
    return list(s["ee"]) if task == "ee" else list(s[task])


def cooccurrence_hard_negatives(records: Sequence[dict], schema: dict, top: int = 3) -> dict[str, dict[str, list[str]]]:
    """``{lang: {label: [labels]}}``: for each label, the ``top`` labels of the same task that
    appear most often in the *same records* as it (ties: schema order). A record that has X but
    not its usual companion Y is where "Y" is a confusable negative: a hard negative."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for rec in records:
        lang = rec.get("lang") or guess_lang(rec["text"])
        for task in TASKS:
            present = sorted({item_label(task, x) for x in rec.get(FIELD[task]) or []})
            for a in present:
                row = counts.setdefault((lang, a), {})
                for b in present:
                    if b != a:
                        row[b] = row.get(b, 0) + 1
    out: dict[str, dict[str, list[str]]] = {}
    for lang, s in schema.items():
        for task in TASKS:
            order = {lab: i for i, lab in enumerate(task_labels(task, s))}
            for a in order:
                row = counts.get((lang, a), {})
                ranked = sorted((b for b in row if b in order), key=lambda b: (-row[b], order[b]))
                if ranked:
                    out.setdefault(lang, {})[a] = ranked[:top]
    return out


def resolve_negatives(
    records: Sequence[dict], schema: dict, hard_negatives: dict[str, dict[str, list[str]]] | None
) -> dict[str, dict[str, list[str]]]:
    """Hard negatives per language: as given, else the schema's ``hard_negatives``, else co-occurrence."""
    if hard_negatives is not None:
        return hard_negatives
    derived = None
    out: dict[str, dict[str, list[str]]] = {}
    for lang, s in schema.items():
        if isinstance(s.get("hard_negatives"), dict):
            out[lang] = s["hard_negatives"]
        else:
            if derived is None:
                derived = cooccurrence_hard_negatives(records, schema)
            out[lang] = derived.get(lang, {})
    return out


def split_sizes_for(split_num: dict[str, int] | int | None) -> dict[str, int]:
    if split_num is None:
        return dict(SPLIT_NUM)
    return {t: int(split_num) for t in TASKS} if isinstance(split_num, int) else {**SPLIT_NUM, **split_num}


def label_batches(
    rec: dict,
    task: str,
    s: dict,
    rng: random.Random,
    k: int,
    neg_ratio: float,
    hard_map: dict[str, list[str]],
    negative: bool,
) -> Iterator[list[str]]:
    """The schema batches one (record, task) is asked in (the rule in ``build_instructions``),
    each yielded before the next is drawn, so a caller's draws between batches keep the stream."""
    items = rec.get(FIELD[task]) or []
    labels = task_labels(task, s)
    keep_empty = rng.random() < neg_ratio  # drawn for every task: keeps the stream stable
    present = {item_label(task, x) for x in items}
    positives = [lab for lab in labels if lab in present]
    if not positives:
        if not (negative or keep_empty):
            return
        candidates = rng.sample(labels, min(k, len(labels)))
    else:
        hard: list[str] = []
        for p in positives:
            for h in hard_map.get(p, []):
                if h in labels and h not in present and h not in hard:
                    hard.append(h)
        others = [lab for lab in labels if lab not in present and lab not in hard]
        sampled = [lab for lab, u in zip(others, [rng.random() for _ in others]) if u < neg_ratio]
        candidates = positives + hard + sampled
        rng.shuffle(candidates)
    start = 0
    for size in split_sizes(len(candidates), k):
        yield candidates[start : start + size]
        start += size


def check_ratio(neg_ratio: float) -> None:
    if not 0 <= neg_ratio <= 1:
        raise ValueError(f"neg_ratio must be in [0, 1], got {neg_ratio}")
