"""Parsers for what language models actually emit when asked for NER / RE / EE answers.

Two answer formats, as the instruction builder writes them (``knowlm_ray.instruct.kg2instruct``):

* ``tuple`` — ``(实体,实体类型)``, ``(head,relation,tail)``, ``(trigger,event type,[(argument,role)])``;
* ``json``  — IEPile style ``{"type": ["mention"]}``, ``{"relation": [{"subject", "object"}]}``,
  ``{"event type": [{"trigger", "arguments": {role: value | [values]}}]}``; a list of DESIGN
  record items (``[{"text", "type"}]``...) or a record-shaped object is understood too.

``parse_answer`` never raises on model text. It survives:

* prose before, between and after the answer (``答案如下：…``, code fences, "Hope this helps");
* truncated output (generation hit ``max_tokens``): every *complete* item is kept — a cut-off
  string is dropped, a cut-off object keeps its complete members, so ``{"人物": ["鲁迅", "周``
  gives 鲁迅 and an event cut inside its arguments keeps its trigger and complete arguments;
* full-width syntax (``（），：［］｛｝【】“”``) and single quotes, trailing commas, bare words;
* none-answers ``无`` / ``None`` / ``NAN`` / ``null`` / ``[]`` (whole answer) and ``"NAN"`` values;
* duplicated items (models loop): each item is kept once, in first-seen order; a JSON key written
  twice (``{"时间": ["1881年"], "时间": ["1993年"]}``) keeps the values of both;
* both formats, detected from the first structural character (``auto``), falling back to the
  other format when the detected one yields nothing.

``status`` says what happened: ``ok``, ``partial`` (recovered from truncated or malformed text),
``none`` (an explicit none-answer) or ``unparsed`` (no answer structure found at all).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TASKS = ("ner", "re", "ee")
FORMATS = ("tuple", "json")
FIELD = {"ner": "entities", "re": "relations", "ee": "events"}  # task -> IE record list

# A whole answer meaning "nothing found" (compared stripped, case-folded, final 。. removed).
NONE_ANSWERS = frozenset({"", "无", "none", "nan", "null", "[]", "{}", "没有", "n/a", "空"})
# A single value meaning "absent" (IEPile writes "NAN" for an unfilled role).
NONE_VALUES = frozenset({"", "NAN", "NaN", "nan", "None", "none", "null", "NULL", "无", "N/A", "n/a"})

# Full-width (and CJK bracket) forms of the syntax characters, for the tuple format.
_TUPLE_FW = str.maketrans({"（": "(", "）": ")", "，": ",", "［": "[", "］": "]", "【": "[", "】": "]"})
_OPEN_OBJ, _CLOSE_OBJ = "{｛", "}｝"
_OPEN_ARR, _CLOSE_ARR = "[［", "]］"
_COLON, _COMMA = ":：", ",，"
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」"}
_WRAP_QUOTES = [('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("「", "」"), ("`", "`")]


@dataclass
class Parsed:
    """What one model answer yields for one task."""

    items: list[dict] = field(default_factory=list)  # DESIGN record items of the task's list
    status: str = "unparsed"  # ok | partial | none | unparsed
    format: str = "none"  # json | tuple | none

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "partial", "none")


# ------------------------------------------------------------------------------- helpers
def _clean(value: Any) -> str | None:
    """A span or label from the answer, or None when it is empty / a none-marker / not text."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = _unwrap(value.strip())
    return None if value in NONE_VALUES else value


def _unwrap(s: str) -> str:
    """Strip one pair of wrapping quotes: ``"鲁迅"`` → ``鲁迅`` (inner quotes stay)."""
    for a, b in _WRAP_QUOTES:
        if len(s) >= 2 and s[0] == a and s[-1] == b:
            return s[1:-1].strip()
    return s


def _norm_label(s: str) -> str:
    return unicodedata.normalize("NFKC", s).strip().casefold()


def is_none_answer(text: str) -> bool:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()] or [""]
    return all(unicodedata.normalize("NFKC", ln).rstrip("。.!！").strip().casefold() in NONE_ANSWERS for ln in lines)


_LAST_CLAUSE = re.compile(r"[。：:！!？?\n]")


def _ends_with_none(text: str) -> bool:
    """Prose whose last clause is a none-answer (after the last 。 : ! ? or newline)."""
    parts = [p for p in _LAST_CLAUSE.split(text.rstrip("。.!！ \n")) if p.strip()]
    return bool(parts) and is_none_answer(parts[-1])


def _dedupe_args(args: list[dict]) -> list[dict]:
    seen, out = set(), []
    for a in args:
        key = (a["role"], a["text"])
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def item_key(task: str, item: dict) -> tuple:
    """Identity of an item for de-duplication (events: type, trigger and arguments)."""
    if task == "ner":
        return (item["text"], item["type"])
    if task == "re":
        return (item["head"], item["relation"], item["tail"])
    return (item["type"], item["trigger"], tuple((a["role"], a["text"]) for a in item["arguments"]))


def dedupe(task: str, items: Iterable[dict]) -> list[dict]:
    """Each item once, first-seen order. Events of one answer sharing type and trigger are one
    event (a looping model repeats it, often cut shorter): their arguments are united."""
    if task == "ee":
        events: dict[tuple, dict] = {}
        for ev in items:
            key = (ev["type"], ev["trigger"])
            if key in events:
                events[key]["arguments"] = _dedupe_args(events[key]["arguments"] + ev["arguments"])
            else:
                events[key] = {**ev, "arguments": _dedupe_args(ev["arguments"])}
        return list(events.values())
    seen, out = set(), []
    for it in items:
        key = item_key(task, it)
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


# --------------------------------------------------------------------------- tuple format
_CLOSER = {"(": ")", "<": ">", "[": "]"}


def _tuples(text: str, opener: str) -> list[tuple[str, bool]]:
    """Top-level ``opener…closer`` groups as (inner text, complete).

    ``(`` and ``[`` nest; a group never spans a line: one cut by a newline or by the end of the
    text comes back incomplete and scanning goes on after it.
    """
    closer, out, i, n = _CLOSER[opener], [], 0, len(text)
    while (i := text.find(opener, i)) >= 0:
        depth, j, end = 0, i, None
        while j < n and text[j] != "\n":
            c = text[j]
            if opener == "<":
                if c == closer:
                    end = j
                    break
            elif c in "([":
                depth += 1
            elif c in ")]":
                depth -= 1
                if depth == 0:
                    end = j
                    break
            j += 1
        if end is None:
            out.append((text[i + 1 : j], False))
            i = j
        else:
            out.append((text[i + 1 : end], True))
            i = end + 1
    return out


def _split_parts(inner: str) -> list[tuple[int, int]]:
    """(start, end) of the comma-separated parts of ``inner`` at bracket depth 0."""
    parts, depth, start = [], 0, 0
    for j, c in enumerate(inner):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append((start, j))
            start = j + 1
    parts.append((start, len(inner)))
    return parts


def _pair(inner: str) -> tuple[str | None, str | None] | None:
    """``span,label`` where the span may itself hold commas: the label is the last part.

    None when ``inner`` is not a pair; a part is None when it is empty or a none-marker (NAN).
    """
    parts = _split_parts(inner)
    if len(parts) < 2:
        return None
    return _clean(inner[: parts[-1][0] - 1]), _clean(inner[parts[-1][0] :])


def _triple(inner: str, labels: set[str] | None) -> tuple[str | None, str | None, str | None] | None:
    parts = _split_parts(inner)
    if len(parts) < 3:
        return None
    if len(parts) == 3:
        head, rel, tail = (_clean(inner[a:b]) for a, b in parts)
        return head, rel, tail
    if not labels:
        return None
    # More commas than a triple has: the one part naming a known relation splits head from tail.
    hits = [k for k in range(1, len(parts) - 1) if _norm_label(inner[slice(*parts[k])]) in labels]
    if len(hits) != 1:
        return None
    k = hits[0]
    head, rel = _clean(inner[: parts[k][0] - 1]), _clean(inner[slice(*parts[k])])
    tail = _clean(inner[parts[k][1] + 1 :])
    return head, rel, tail


def _event(inner: str, complete: bool) -> dict | None:
    parts = _split_parts(inner)
    if len(parts) < 2 or (not complete and len(parts) < 3):
        return None  # a cut-off event must at least have finished its type
    trigger, etype = _clean(inner[slice(*parts[0])]), _clean(inner[slice(*parts[1])])
    if not (trigger and etype):
        return None
    args = []
    rest = inner[parts[2][0] :] if len(parts) > 2 else ""
    for sub, done in _tuples(rest, "("):
        pair = _pair(sub) if done else None
        if pair and all(pair):
            args.append({"role": pair[1], "text": pair[0]})
    return {"type": etype, "trigger": trigger, "arguments": args}


def parse_tuples(task: str, text: str, labels: Iterable[str] | None = None) -> tuple[list[dict], bool, bool]:
    """Items of the tuple format in ``text``: (items, found any tuple, recovered from damage)."""
    text = text.translate(_TUPLE_FW)
    norm_labels = {_norm_label(x) for x in labels} if labels else None
    groups = _tuples(text, "(")
    if not groups and task != "ee":  # KnowLM's other English shapes: <h, r, t> and [h, r, t]
        groups = _tuples(text, "<") or _tuples(text, "[")
    items, damaged = [], False
    for inner, complete in groups:
        if task == "ee":
            ev = _event(inner, complete)
            if ev:
                items.append(ev)
            damaged |= not complete
            continue
        if not complete:
            damaged = True
            continue  # the last part may be cut: a truncated pair/triple is not trusted
        if task == "ner":
            pair = _pair(inner)
            if pair and all(pair):
                items.append({"text": pair[0], "type": pair[1]})
            elif pair is None:
                damaged = True  # not a pair at all (a NAN part is a valid "absent")
        else:
            t = _triple(inner, norm_labels)
            if t and all(t):
                items.append({"head": t[0], "relation": t[1], "tail": t[2]})
            elif t is None:
                damaged = True
    return items, bool(groups), damaged


# ---------------------------------------------------------------------------- JSON format
_INCOMPLETE = object()  # a scalar cut off mid-way: never kept


class _Lenient:
    """A forgiving JSON reader: full-width syntax, ' and “” quotes, bare words, trailing commas.

    ``read(i)`` returns ``(value, end, complete)``. When the text ends or breaks inside a value,
    containers come back with their complete members (``complete`` False) and a cut scalar comes
    back as ``_INCOMPLETE``.
    """

    def __init__(self, text: str):
        self.s = text
        self.n = len(text)

    def ws(self, i: int) -> int:
        while i < self.n and self.s[i].isspace():
            i += 1
        return i

    def read(self, i: int) -> tuple[Any, int, bool]:
        i = self.ws(i)
        if i >= self.n:
            return _INCOMPLETE, i, False
        c = self.s[i]
        if c in _OPEN_OBJ:
            return self.obj(i + 1)
        if c in _OPEN_ARR:
            return self.arr(i + 1)
        if c in _QUOTES:
            return self.string(i)
        return self.bare(i)

    def string(self, i: int) -> tuple[Any, int, bool]:
        close = _QUOTES[self.s[i]]
        j = i + 1
        while j < self.n:
            c = self.s[j]
            if c == "\\" and close == '"':
                j += 2
                continue
            if c == close:
                raw = self.s[i + 1 : j]
                if close == '"':
                    try:
                        return json.loads(f'"{raw}"'), j + 1, True
                    except json.JSONDecodeError:
                        pass
                return raw, j + 1, True
            j += 1
        return _INCOMPLETE, self.n, False

    def bare(self, i: int) -> tuple[Any, int, bool]:
        j = i
        while j < self.n and self.s[j] not in ",:]}，：］｝\n" and self.s[j] not in _OPEN_OBJ + _OPEN_ARR:
            j += 1
        word = self.s[i:j].strip()
        if j >= self.n or not word:
            return _INCOMPLETE, j, False  # a bare word at the very end may be cut off
        lowered = word.lower()
        if lowered in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[lowered], j, True
        try:
            return json.loads(word), j, True
        except (json.JSONDecodeError, ValueError):
            return word, j, True

    def _members(self, i: int, out: Any, close: str, member) -> tuple[Any, int, bool]:
        """The loop objects and arrays share: ``member(i)`` reads one member into ``out`` and
        returns (end, complete); separators, stray commas and the closer are handled here."""
        while True:
            i = self.ws(i)
            if i >= self.n:
                return out, i, False
            if self.s[i] in close:
                return out, i + 1, True
            if self.s[i] in _COMMA:  # trailing / doubled comma
                i += 1
                continue
            i, done = member(i)
            if not done:
                return out, i, False
            i = self.ws(i)
            if i < self.n and self.s[i] in _COMMA:
                i += 1
            elif i < self.n and self.s[i] not in close:
                return out, i, False  # broken: keep what came before

    def obj(self, i: int) -> tuple[dict, int, bool]:
        out: dict = {}

        def member(i: int) -> tuple[int, bool]:
            key, i, done = self.read(i)
            if not done or not isinstance(key, (str, int, float)) or isinstance(key, bool):
                return i, False
            i = self.ws(i)
            if i >= self.n or self.s[i] not in _COLON:
                return i, False
            value, i, done = self.read(i + 1)
            if value is not _INCOMPLETE:
                _merge_key(out, str(key), value)
            return i, done

        return self._members(i, out, _CLOSE_OBJ, member)

    def arr(self, i: int) -> tuple[list, int, bool]:
        out: list = []

        def member(i: int) -> tuple[int, bool]:
            value, i, done = self.read(i)
            if value is not _INCOMPLETE:
                out.append(value)
            return i, done

        return self._members(i, out, _CLOSE_ARR, member)


_JSON_START = re.compile(r"[{｛\[［]")


def _merge_key(obj: dict, key: str, value: Any) -> None:
    """Set ``obj[key]``; a key seen before keeps both values (as one list), not just the last."""
    obj[key] = _as_list(obj[key]) + _as_list(value) if key in obj else value


def _merged_object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        _merge_key(out, key, value)
    return out


def read_json_values(text: str) -> tuple[list[Any], bool]:
    """Every top-level JSON object / array in ``text`` (prose between them is skipped).

    Returns (values, damaged): damaged when some value had to be recovered leniently.
    """
    values, damaged, i = [], False, 0
    decoder = json.JSONDecoder(object_pairs_hook=_merged_object)
    while True:
        m = _JSON_START.search(text, i)
        if not m:
            return values, damaged
        start = m.start()
        try:
            value, end = decoder.raw_decode(text, start)
            complete = True
        except json.JSONDecodeError:
            value, end, complete = _Lenient(text).read(start)
            damaged = True
        if isinstance(value, (dict, list)):
            values.append(value)
        if not complete or end <= start:
            return values, damaged
        i = end


def _first(d: dict, *keys: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def _per_value(make):
    """``items(label, values)``: ``make(label, value)`` for each value under a usable label
    (IEPile's ``{label: [values]}`` maps, one reader per task)."""

    def items(label: Any, values: Any) -> list[dict]:
        label = _clean(label)
        if not label:
            return []
        return [item for v in _as_list(values) if (item := make(label, v))]

    return items


@_per_value
def _ner_items(label: str, v: Any) -> dict | None:
    if isinstance(v, dict):
        v = _first(v, "text", "entity", "mention", "name", "span")
    span = _clean(v)
    return {"text": span, "type": label} if span else None


@_per_value
def _re_items(label: str, v: Any) -> dict | None:
    if isinstance(v, dict):
        head, tail = _first(v, "subject", "head", "h"), _first(v, "object", "tail", "t")
    elif isinstance(v, list) and len(v) == 2:
        head, tail = v
    else:
        return None
    head, tail = _clean(head), _clean(tail)
    return {"head": head, "relation": label, "tail": tail} if head and tail else None


def _ee_args(raw: Any) -> list[dict]:
    args = []
    if isinstance(raw, dict):  # IEPile: {role: value | [values] | "NAN"}
        for role, fill in raw.items():
            role = _clean(role)
            for f in _as_list(fill):
                f = _clean(f)
                if role and f:
                    args.append({"role": role, "text": f})
    elif isinstance(raw, list):  # [{"role", "text"|"argument"}]
        for a in raw:
            if isinstance(a, dict):
                role, text = _clean(_first(a, "role")), _clean(_first(a, "text", "argument", "value"))
                if role and text:
                    args.append({"role": role, "text": text})
    return args


@_per_value
def _ee_items(label: str, v: Any) -> dict | None:
    if not isinstance(v, dict):
        return None
    trigger = _clean(_first(v, "trigger", "event_trigger"))
    return {"type": label, "trigger": trigger, "arguments": _ee_args(v.get("arguments"))} if trigger else None


def _record_items(task: str, rows: Any) -> list[dict]:
    """DESIGN record items (``[{"text","type"}]`` …) written by a model or another tool."""
    out: list[dict] = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict):
            continue
        if task == "ner":
            out += _ner_items(_first(r, "type", "entity_type", "label"), _first(r, "text", "entity", "mention"))
        elif task == "re":
            out += _re_items(
                _first(r, "relation", "predicate", "rel"),
                {"subject": _first(r, "head", "subject"), "object": _first(r, "tail", "object")},
            )
        else:
            out += _ee_items(_first(r, "type", "event_type"), r)
    return out


_BY_TASK = {"ner": _ner_items, "re": _re_items, "ee": _ee_items}


def json_items(task: str, value: Any) -> list[dict]:
    """Items of one parsed JSON value (IEPile label map, DESIGN record, or a list of items)."""
    if isinstance(value, list):
        return _record_items(task, value)
    if not isinstance(value, dict):
        return []
    if isinstance(value.get(FIELD[task]), list):  # {"entities": [...]} record shape
        return _record_items(task, value[FIELD[task]])
    out: list[dict] = []
    for label, values in value.items():
        out += _BY_TASK[task](label, values)
    return out


def parse_json(task: str, text: str) -> tuple[list[dict], bool, bool]:
    """Items of the JSON format in ``text``: (items, found any JSON value, recovered from damage)."""
    values, damaged = read_json_values(text)
    items: list[dict] = []
    for v in values:
        items += json_items(task, v)
    return items, bool(values), damaged


# ------------------------------------------------------------------------------ entry points
_FIRST_STRUCT = re.compile(r"[{｛(（]")


def detect_format(text: str) -> str:
    """``json`` when the first ``{`` comes before the first ``(``, else ``tuple``."""
    m = _FIRST_STRUCT.search(text)
    return "json" if m and m.group(0) in "{｛" else "tuple"


def parse_answer(task: str, text: str | None, fmt: str = "auto", labels: Iterable[str] | None = None) -> Parsed:
    """Parse one model answer for ``task``; never raises on the text.

    ``labels`` (the schema's relation names) lets a tuple with extra commas be split around the
    relation. Items come back de-duplicated, in first-seen order, with spans as written.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if fmt not in (*FORMATS, "auto"):
        raise ValueError(f"unknown output format {fmt!r} (expected one of {FORMATS} or 'auto')")
    text = (text or "").strip()
    if is_none_answer(text):
        return Parsed([], "none", "none")
    order = [fmt] if fmt != "auto" else [detect_format(text)]
    if fmt == "auto":
        order.append("tuple" if order[0] == "json" else "json")
    best: Parsed | None = None
    for f in order:
        if f == "json":
            items, found, damaged = parse_json(task, text)
        else:
            items, found, damaged = parse_tuples(task, text, labels)
        if found:
            result = Parsed(dedupe(task, items), "partial" if damaged else "ok", f)
            if result.items or best is None:
                best = result
            if result.items:
                break
    if best is None and _ends_with_none(text):
        return Parsed([], "none", "none")  # "好的。无" / "The answer is: None"
    return best or Parsed([], "unparsed", "none")


def parse_output(task: str, lang: str, fmt: str, text: str) -> dict[str, list]:
    """Read an answer back into ``{"entities", "relations", "events"}`` (only ``task``'s list filled).

    The instruction builder's reader (``kg2instruct`` re-exports it). ``fmt`` may be ``"auto"``.
    ``lang`` is accepted for symmetry with ``render_output``; both none-answers are understood.
    """
    items = parse_answer(task, text, fmt).items
    result: dict[str, list] = {"entities": [], "relations": [], "events": []}
    result[FIELD[task]] = items
    return result
