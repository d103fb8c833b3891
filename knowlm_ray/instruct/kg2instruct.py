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

``--serve-prompt`` writes instead the prompts ``/extract`` sends (``build_serve_instructions``).

    python -m knowlm_ray.instruct.kg2instruct --records R --schema S --out O [--seed N]
        [--tasks ner,re,ee] [--lang zh|en] [--limit N] [--serve-prompt]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

# The parsers (and the task / format / field names they share with this builder) live in ie.
from knowlm_ray.atomic import atomic_open
from knowlm_ray.ie.parsers import FIELD, FORMATS, TASKS, parse_output  # noqa: F401
from knowlm_ray.instruct.alpaca import RecordError

LANGS = ("zh", "en")
NONE_ANSWER = {"zh": "无", "en": "None"}
# Characters the tuple format uses as syntax: a span holding one cannot be written as a tuple.
_TUPLE_SYNTAX = set("(),[]\n")

# Instruction templates: {schema} = candidate labels, {fmt} = the answer format sentence.
TEMPLATES = {
    "ner": {
        "zh": ["请从输入文本中抽取实体，候选的实体类型为{schema}。{fmt}",
               "已知实体类型列表：{schema}。请找出下面文本中所有属于这些类型的实体。{fmt}",
               "你是一名命名实体识别专家。请根据给定的实体类型{schema}，识别句子中出现的实体。{fmt}"],
        "en": ["Extract the named entities in the input whose type is one of {schema}. {fmt}",
               "Given the entity types {schema}, find every entity of those types mentioned in the text. {fmt}",
               "You are an expert in named entity recognition. Using the candidate types {schema}, "
               "label the entities that appear in the following passage. {fmt}"],
    },
    "re": {
        "zh": ["已知候选关系列表：{schema}，请从输入中找出具有这些关系的头实体和尾实体。{fmt}",
               "请根据关系列表{schema}，抽取文本中表达的关系三元组。{fmt}",
               "你是一名关系抽取专家。给定候选关系{schema}，请判断下面文本中哪些实体之间存在这些关系。{fmt}"],
        "en": ["Identify the subjects and objects in the input that are linked by one of the relations "
               "{schema}. {fmt}",
               "Given the candidate relations {schema}, extract all relation triples expressed in the text. {fmt}",
               "You are an expert in relation extraction. Find which pairs of entities in the following "
               "passage stand in a relation from {schema}. {fmt}"],
    },
    "ee": {
        "zh": ["已知事件类型及其论元角色：{schema}。请从输入中抽取事件的触发词、事件类型和论元。{fmt}",
               "请根据给定的事件结构{schema}，找出文本中发生的事件以及每个事件的论元。{fmt}",
               "你是一名事件抽取专家。候选事件类型与对应的论元角色为{schema}，请分析下面的句子。{fmt}"],
        "en": ["The candidate event types and their argument roles are {schema}. Extract the events in the "
               "input together with their triggers and arguments. {fmt}",
               "Given the event schema {schema}, find each event described in the text and the arguments "
               "that fill its roles. {fmt}",
               "You are an expert in event extraction. Using the event types and roles {schema}, analyse "
               "the following sentence. {fmt}"],
    },
}

# The answer-format sentence: names the format and the none-answer, so the output is checkable.
FORMAT_TEXT = {
    ("ner", "tuple"): {"zh": "请以(实体,实体类型)的格式回答，每行一个；如果没有符合的实体，请回答“无”。",
                       "en": "Answer in the form (entity,entity type), one per line; if there is no "
                             "such entity, answer None."},
    ("ner", "json"): {"zh": "请以JSON字符串回答，格式为{\"实体类型\": [\"实体\"]}；如果没有符合的实体，请回答“无”。",
                      "en": "Answer with a JSON string shaped like {\"entity type\": [\"entity\"]}; if "
                            "there is no such entity, answer None."},
    ("re", "tuple"): {"zh": "请按照(头实体,关系,尾实体)的格式回答，每行一个三元组；如果不存在这些关系，请回答“无”。",
                      "en": "Answer in the form (subject,relation,object), one triple per line; if none "
                            "of these relations holds, answer None."},
    ("re", "json"): {"zh": "请以JSON字符串回答，格式为{\"关系\": [{\"subject\": \"头实体\", \"object\": \"尾实体\"}]}；"
                           "如果不存在这些关系，请回答“无”。",
                     "en": "Answer with a JSON string shaped like {\"relation\": [{\"subject\": \"...\", "
                           "\"object\": \"...\"}]}; if none of these relations holds, answer None."},
    ("ee", "tuple"): {"zh": "请以(事件触发词,事件类型,[(事件论元,论元角色)])的形式回答，每行一个事件；"
                            "如果没有这些事件，请回答“无”。",
                      "en": "Answer in the form (trigger,event type,[(argument,role)]), one event per line; "
                            "if no such event occurs, answer None."},
    ("ee", "json"): {"zh": "请以JSON字符串回答，格式为{\"事件类型\": [{\"trigger\": \"触发词\", \"arguments\": "
                           "{\"论元角色\": \"论元\"}}]}；如果没有这些事件，请回答“无”。",
                     "en": "Answer with a JSON string shaped like {\"event type\": [{\"trigger\": \"...\", "
                           "\"arguments\": {\"role\": \"...\"}}]}; if no such event occurs, answer None."},
}


# ---------------------------------------------------------------------------------- loading

def _check_span(rec: dict, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is missing or not a non-empty string")
    if value not in rec["text"]:
        raise ValueError(f"{what} {value!r} does not occur in the text")
    return value


def _check_label(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is missing or not a non-empty string")
    return value


def _list(obj: dict, key: str) -> list:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} is not a list")
    return value


def validate_ie_record(obj: Any) -> dict:
    """Check one IE record (every span verbatim in the text); returns it with all lists present."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "text"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise ValueError(f"field {key!r} is missing or not a non-empty string")
    lang = obj.get("lang", guess_lang(obj["text"]))
    if lang not in LANGS:
        raise ValueError(f"field 'lang' must be one of {LANGS}, got {lang!r}")
    rec = {"id": obj["id"], "lang": lang, "text": obj["text"], "entities": [], "relations": [], "events": []}
    for i, e in enumerate(_list(obj, "entities")):
        if not isinstance(e, dict):
            raise ValueError(f"entities[{i}] is not an object")
        rec["entities"].append({"text": _check_span(rec, e.get("text"), f"entities[{i}].text"),
                                "type": _check_label(e.get("type"), f"entities[{i}].type")})
    for i, r in enumerate(_list(obj, "relations")):
        if not isinstance(r, dict):
            raise ValueError(f"relations[{i}] is not an object")
        rec["relations"].append({"head": _check_span(rec, r.get("head"), f"relations[{i}].head"),
                                 "relation": _check_label(r.get("relation"), f"relations[{i}].relation"),
                                 "tail": _check_span(rec, r.get("tail"), f"relations[{i}].tail")})
    for i, ev in enumerate(_list(obj, "events")):
        if not isinstance(ev, dict):
            raise ValueError(f"events[{i}] is not an object")
        args = []
        for j, a in enumerate(_list(ev, "arguments")):
            if not isinstance(a, dict):
                raise ValueError(f"events[{i}].arguments[{j}] is not an object")
            args.append({"role": _check_label(a.get("role"), f"events[{i}].arguments[{j}].role"),
                         "text": _check_span(rec, a.get("text"), f"events[{i}].arguments[{j}].text")})
        rec["events"].append({"type": _check_label(ev.get("type"), f"events[{i}].type"),
                              "trigger": _check_span(rec, ev.get("trigger"), f"events[{i}].trigger"),
                              "arguments": args})
    return rec


def iter_ie_records(path: str | Path, schema: dict | None = None
                    ) -> Iterator[tuple[int, str, dict | None, str | None]]:
    """``(line number, line, record, None)`` for each good line of an IE records file and
    ``(line number, line, None, reason)`` for each bad one: invalid JSON, a bad record, a duplicate
    id and, with ``schema``, a language or label outside it. Blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise RecordError(f"IE records not found: {p}")
    seen: dict[str, int] = {}
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            line = line.rstrip("\n")
            try:
                rec = validate_ie_record(json.loads(line))
                if schema is not None:
                    _section(rec, schema)
                if rec["id"] in seen:
                    raise ValueError(f"duplicate id {rec['id']!r} (first at line {seen[rec['id']]})")
            except json.JSONDecodeError as exc:
                yield n, line, None, f"invalid JSON: {exc.msg}"
                continue
            except ValueError as exc:
                yield n, line, None, str(exc)
                continue
            seen[rec["id"]] = n
            yield n, line, rec, None


def load_ie_records(path: str | Path) -> list[dict]:
    """Read IE records (JSON lines); any bad line raises RecordError naming ``file:line``."""
    records = []
    for n, _, rec, err in iter_ie_records(path):
        if err:
            raise RecordError(f"{Path(path)}:{n}: {err}")
        records.append(rec)
    return records


def read_json_object(path: str | Path, what: str = "schema") -> dict:
    """The JSON object in ``path``; RecordError naming the file when it is missing, not JSON or
    not an object."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{what} not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{p}: expected a JSON object")
    return data


def load_schema(path: str | Path) -> dict:
    """Read the label schema; a wrong shape raises RecordError naming the file and the key."""
    p = Path(path)
    schema = read_json_object(p)
    if not schema or not set(schema) <= set(LANGS):
        raise RecordError(f"{p}: expected an object keyed by language ({', '.join(LANGS)})")

    def is_labels(x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(s, str) and s for s in x)

    for lang, s in schema.items():
        if not isinstance(s, dict):
            raise RecordError(f"{p}: {lang} is not an object")
        for key in ("ner", "re"):
            if not is_labels(s.get(key)):
                raise RecordError(f"{p}: {lang}.{key} must be a list of label strings")
        ee = s.get("ee")
        if not isinstance(ee, dict) or not all(is_labels(roles) for roles in ee.values()):
            raise RecordError(f"{p}: {lang}.ee must map each event type to a list of roles")
        hard = s.get("hard_negatives", {})
        if not isinstance(hard, dict) or not all(is_labels(v) for v in hard.values()):
            raise RecordError(f"{p}: {lang}.hard_negatives must map a label to a list of labels")
    return schema


def guess_lang(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def _check_in_schema(rec: dict, s: dict) -> None:
    bad = ([f"entity type {e['type']!r}" for e in rec["entities"] if e["type"] not in s["ner"]]
           + [f"relation {r['relation']!r}" for r in rec["relations"] if r["relation"] not in s["re"]]
           + [f"event type {ev['type']!r}" for ev in rec["events"] if ev["type"] not in s["ee"]]
           + [f"role {a['role']!r} of {ev['type']!r}" for ev in rec["events"] if ev["type"] in s["ee"]
              for a in ev["arguments"] if a["role"] not in s["ee"][ev["type"]]])
    if bad:
        raise ValueError(f"record {rec['id']!r}: {', '.join(bad)} not in the {rec['lang']} schema")


def _section(rec: dict, schema: dict) -> tuple[str, dict]:
    """(language, schema section) of a record whose labels are all in that section."""
    lang = rec.get("lang") or guess_lang(rec["text"])
    if lang not in schema:
        raise ValueError(f"record {rec['id']!r}: no {lang!r} section in the schema")
    _check_in_schema({**rec, "lang": lang}, schema[lang])
    return lang, schema[lang]


def _check_tasks(tasks: Sequence[str]) -> None:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} (expected {TASKS})")


# -------------------------------------------------------------------------------- rendering

def tuple_safe(items: Iterable[dict]) -> bool:
    """True when no span or label contains tuple syntax, so the tuple format round-trips."""
    def strings(x: Any) -> Iterable[str]:
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
    return all(s == s.strip() and not (_TUPLE_SYNTAX & set(s)) for s in strings(list(items)))


def _group(pairs: Iterable[tuple[str, Any]]) -> dict[str, list]:
    out: dict[str, list] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


def render_output(task: str, lang: str, fmt: str, items: Sequence[dict]) -> str:
    """The answer text for one task's gold list (``NONE_ANSWER`` when the list is empty)."""
    if not items:
        return NONE_ANSWER[lang]
    if fmt == "tuple":
        if task == "ner":
            lines = [f"({e['text']},{e['type']})" for e in items]
        elif task == "re":
            lines = [f"({r['head']},{r['relation']},{r['tail']})" for r in items]
        else:
            lines = ["({},{},[{}])".format(ev["trigger"], ev["type"], ",".join(
                f"({a['text']},{a['role']})" for a in ev["arguments"])) for ev in items]
        return "\n".join(lines)
    if fmt != "json":
        raise ValueError(f"unknown output format {fmt!r} (expected one of {FORMATS})")
    if task == "ner":
        obj: dict = _group((e["type"], e["text"]) for e in items)
    elif task == "re":
        obj = _group((r["relation"], {"subject": r["head"], "object": r["tail"]}) for r in items)
    else:
        obj = {}
        for ev in items:
            by_role = _group((a["role"], a["text"]) for a in ev["arguments"])
            # IEPile style: one value per role, a list only when a role has several fillers.
            args = {role: vals[0] if len(vals) == 1 else vals for role, vals in by_role.items()}
            obj.setdefault(ev["type"], []).append({"trigger": ev["trigger"], "arguments": args})
    return json.dumps(obj, ensure_ascii=False)


def _batch_text(task: str, s: dict, batch: Sequence[str]) -> str:
    """The batch's labels as the instruction shows them (EE: ``{type: [roles]}``), order kept."""
    if task == "ee":
        return json.dumps({t: s["ee"][t] for t in batch}, ensure_ascii=False)
    return json.dumps(list(batch), ensure_ascii=False)


def _label(task: str, item: dict) -> str:
    return item["type"] if task in ("ner", "ee") else item["relation"]


def _task_labels(task: str, s: dict) -> list[str]:
    return list(s["ee"]) if task == "ee" else list(s[task])


def cooccurrence_hard_negatives(records: Sequence[dict], schema: dict,
                                top: int = 3) -> dict[str, dict[str, list[str]]]:
    """``{lang: {label: [labels]}}``: for each label, the ``top`` labels of the same task that
    appear most often in the *same records* as it (ties: schema order). A record that has X but
    not its usual companion Y is where "Y" is a confusable negative: a hard negative."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for rec in records:
        lang = rec.get("lang") or guess_lang(rec["text"])
        for task in TASKS:
            present = sorted({_label(task, x) for x in rec.get(FIELD[task]) or []})
            for a in present:
                row = counts.setdefault((lang, a), {})
                for b in present:
                    if b != a:
                        row[b] = row.get(b, 0) + 1
    out: dict[str, dict[str, list[str]]] = {}
    for lang, s in schema.items():
        for task in TASKS:
            order = {lab: i for i, lab in enumerate(_task_labels(task, s))}
            for a in order:
                row = counts.get((lang, a), {})
                ranked = sorted((b for b in row if b in order), key=lambda b: (-row[b], order[b]))
                if ranked:
                    out.setdefault(lang, {})[a] = ranked[:top]
    return out


def build_instructions(records: Sequence[dict], schema: dict, seed: int = 0,
                       tasks: Sequence[str] = TASKS, neg_ratio: float = 0.15,
                       split_num: dict[str, int] | int | None = None,
                       hard_negatives: dict[str, dict[str, list[str]]] | None = None) -> list[dict]:
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
    from knowlm_ray.ie.prompts import SPLIT_NUM, split_sizes  # lazy: prompts imports this module

    _check_tasks(tasks)
    if not 0 <= neg_ratio <= 1:
        raise ValueError(f"neg_ratio must be in [0, 1], got {neg_ratio}")
    sizes = dict(SPLIT_NUM) if split_num is None else (
        {t: int(split_num) for t in TASKS} if isinstance(split_num, int) else {**SPLIT_NUM, **split_num})
    if hard_negatives is None:
        derived = None
        hard_negatives = {}
        for lang, s in schema.items():
            if isinstance(s.get("hard_negatives"), dict):
                hard_negatives[lang] = s["hard_negatives"]
            else:
                if derived is None:
                    derived = cooccurrence_hard_negatives(records, schema)
                hard_negatives[lang] = derived.get(lang, {})
    rng = random.Random(seed)  # one private stream: never the global random state
    out = []
    for rec in records:
        lang, s = _section(rec, schema)
        hard_map = hard_negatives.get(lang, {})
        fmt = rng.choice(FORMATS)  # one format per record
        negative = not any(rec.get(FIELD[t]) for t in TASKS)
        for task in tasks:
            items = rec.get(FIELD[task]) or []
            labels = _task_labels(task, s)
            k = sizes[task]
            keep_empty = rng.random() < neg_ratio  # drawn for every task: keeps the stream stable
            present = {_label(task, x) for x in items}
            positives = [lab for lab in labels if lab in present]
            if not positives:
                if not (negative or keep_empty):
                    continue
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
                batch = candidates[start:start + size]
                start += size
                batch_items = [x for x in items if _label(task, x) in batch]
                task_fmt = "json" if fmt == "tuple" and not tuple_safe(batch_items) else fmt
                template = rng.choice(TEMPLATES[task][lang])
                instruction = template.format(schema=_batch_text(task, s, batch),
                                              fmt=FORMAT_TEXT[(task, task_fmt)][lang])
                out.append({"instruction": instruction, "input": rec["text"],
                            "output": render_output(task, lang, task_fmt, batch_items),
                            "task": task, "lang": lang, "format": task_fmt, "id": rec["id"],
                            "labels": list(batch)})
    return out


def build_serve_instructions(records: Sequence[dict], schema: dict, tasks: Sequence[str] = TASKS) -> list[dict]:
    """Alpaca dicts asking exactly what ``/extract`` asks (``knowlm_ray.ie.prompts``'s fixed
    template, JSON answers, the schema's whole label list in its order, cut into the same schema
    batches and text chunks), one per (record, task, prompt). No template, order or format
    variety and no sampled negatives: rows for a model that only has to learn the serving prompt
    (the demo's tiny model), not the task in general (``build_instructions``)."""
    from knowlm_ray.ie.prompts import serve_format_instructions  # lazy: prompts imports this module

    _check_tasks(tasks)
    out = []
    for rec in records:
        lang, s = _section(rec, schema)
        for task in tasks:
            out += serve_format_instructions([rec], task, s[task], lang)
    return out


# -------------------------------------------------------------------------------------- CLI

def write_json_atomic(obj: Any, out: str | Path) -> None:
    """Write JSON to a temp file beside ``out`` then rename: never a half-written file."""
    with atomic_open(out) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=1)
        fh.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kg2instruct", description=__doc__.split("\n")[0])
    ap.add_argument("--records", required=True, help="IE records, one JSON object per line")
    ap.add_argument("--schema", required=True, help="label schema JSON ({lang: {ner, re, ee}})")
    ap.add_argument("--out", required=True, help="output alpaca JSON list")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neg-ratio", type=float, default=0.15,
                    help="chance that a task with no labels still gets a none-answer instruction, and that "
                         "each non-hard negative label joins a record's schema batches")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of ner,re,ee")
    ap.add_argument("--lang", choices=LANGS, help="only the records of this language")
    ap.add_argument("--limit", type=int, help="only the first N records (after --lang)")
    ap.add_argument("--serve-prompt", action="store_true",
                    help="write the prompts /extract sends (fixed template, JSON, whole schema in order) "
                         "instead of varied templates, formats and sampled negatives")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit must be >= 1, got {args.limit}")
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    try:
        records = load_ie_records(args.records)
        if args.lang:
            records = [r for r in records if r["lang"] == args.lang]
        if args.limit is not None:
            records = records[:args.limit]
        schema = load_schema(args.schema)
        rows = (build_serve_instructions(records, schema, tasks) if args.serve_prompt else
                build_instructions(records, schema, seed=args.seed, neg_ratio=args.neg_ratio, tasks=tasks))
    except ValueError as exc:  # RecordError is a ValueError: user-caused, one clear line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(rows, args.out)
    counts = {t: sum(r["task"] == t for r in rows) for t in TASKS}
    empty = sum(r["output"] == NONE_ANSWER[r["lang"]] for r in rows)
    print(f"wrote {len(rows)} instructions from {len(records)} records to {args.out} "
          f"(ner {counts['ner']}, re {counts['re']}, ee {counts['ee']}; none-answers {empty})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
