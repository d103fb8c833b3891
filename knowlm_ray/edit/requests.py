"""Edit requests: KnowEdit, ZsRE or plain ``{prompt, subject, target_new}`` records, validated.

One jsonl file, one record a line (a ``.json`` file holding a list is read too). The format of
each record is told by its keys:

- KnowEdit: ``subject, prompt, target_new, ground_truth``, optional ``rephrase`` (a string or a
  list), ``portability`` and ``locality`` (each a map of named lists of ``{prompt, ground_truth}``);
- ZsRE: ``subject, src, rephrase, alt, answers[], loc, loc_ans``, optional ``portability``
  (``{"New Question", "New Answer"}`` as EasyEdit's set has it, or a list of ``{prompt, ground_truth}``);
- plain: ``prompt, subject, target_new`` (and any of KnowEdit's optional keys).

A ``prompt`` may hold ``{}`` where the subject goes (CounterFact's style). A line that is not a
JSON object, or matches none of the formats, is quarantined and counted; a record that is one of
them but cannot be edited (the subject is not in its prompt, an empty target) is refused with its
``file:line``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from knowlm_ray.errors import InputError, MissingPathError


@dataclass
class EditRequest:
    prompt: str
    subject: str
    target_new: str
    ground_truth: str | None = None
    rephrase: list[str] = field(default_factory=list)
    locality: list[tuple[str, str]] = field(default_factory=list)
    portability: list[tuple[str, str]] = field(default_factory=list)
    where: str = ""  # file:line, for messages

    @property
    def template(self) -> str:
        """The prompt with its last mention of the subject as ``{}``."""
        i = self.prompt.rfind(self.subject)
        return self.prompt[:i] + "{}" + self.prompt[i + len(self.subject) :]

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["locality"] = [list(x) for x in self.locality]
        d["portability"] = [list(x) for x in self.portability]
        return d


@dataclass
class RequestSet:
    requests: list[EditRequest]
    quarantined: list[str]  # "file:line: why"
    formats: dict[str, int]


def _answer(value: Any) -> str | None:
    """A ground truth as EasyEdit's sets give it: a string, a list of them, or a list of lists."""
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else None


def _prompt_answers(value: Any) -> list[tuple[str, str]]:
    """KnowEdit's ``{name: [{prompt, ground_truth}, ...]}``, a plain list of those, or ZsRE's
    ``{"New Question", "New Answer"}``."""
    if isinstance(value, dict) and "New Question" in value:
        value = [{"prompt": value["New Question"], "ground_truth": value.get("New Answer")}]
    if isinstance(value, dict):
        value = [x for group in value.values() if isinstance(group, list) for x in group]
    if isinstance(value, dict) or not isinstance(value, list):
        return []
    out = []
    for x in value:
        if isinstance(x, dict):
            prompts, answer = x.get("prompt"), _answer(x.get("ground_truth"))
            for p in prompts if isinstance(prompts, list) else [prompts]:
                if isinstance(p, str) and p.strip() and answer and answer.strip():
                    out.append((p, answer))
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [x for x in value if isinstance(x, str) and x.strip()] if isinstance(value, list) else []


def detect_format(obj: dict) -> str | None:
    if "src" in obj and "alt" in obj:
        return "zsre"
    if "prompt" in obj and "target_new" in obj:
        return "knowedit" if "ground_truth" in obj or "portability" in obj or "locality" in obj else "plain"
    return None


def parse_request(obj: dict, where: str) -> EditRequest:
    """One record as an ``EditRequest``; ``InputError`` naming ``where`` when it cannot be edited."""
    fmt = detect_format(obj)
    if fmt == "zsre":
        prompt, target = obj.get("src"), _answer(obj.get("alt"))
        truth = _answer(obj.get("answers"))
        locality = [(obj["loc"], _answer(obj.get("loc_ans")))] if isinstance(obj.get("loc"), str) else []
        locality = [(p, a) for p, a in locality if a]
    else:
        prompt, target = obj.get("prompt"), _answer(obj.get("target_new"))
        truth = _answer(obj.get("ground_truth"))
        locality = _prompt_answers(obj.get("locality"))
    subject = obj.get("subject")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: empty or missing prompt")
    if not isinstance(subject, str) or not subject.strip():
        raise InputError(f"{where}: empty or missing subject")
    if target is None or not target.strip():
        raise InputError(f"{where}: empty target ({'alt' if fmt == 'zsre' else 'target_new'})")
    prompt = prompt.replace("{}", subject)
    if subject not in prompt:
        raise InputError(f"{where}: subject {subject!r} not found in its prompt {prompt!r}")
    rephrase = _strings(obj.get("rephrase", obj.get("rephrase_prompt")))
    return EditRequest(
        prompt=prompt.strip(),
        subject=subject,
        target_new=target.strip(),
        ground_truth=truth,
        rephrase=[r.replace("{}", subject) for r in rephrase],
        locality=locality,
        portability=_prompt_answers(obj.get("portability")),
        where=where,
    )


def load_requests(path: str | Path) -> RequestSet:
    """Every request in ``path`` (jsonl, or a json list); refuses a file with none."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"--requests: no such file: {path}")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = [(i + 1, x) for i, x in enumerate(json.loads(stripped))]
            label = "record"
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not a JSON list: {e}") from None
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((n, json.loads(line)))
                except json.JSONDecodeError:
                    items.append((n, None))
        label = "line"
    requests, quarantined, formats = [], [], {}
    for n, obj in items:
        where = f"{path}:{n}" if label == "line" else f"{path} record {n}"
        fmt = detect_format(obj) if isinstance(obj, dict) else None
        if fmt is None:
            quarantined.append(f"{where}: not a KnowEdit, ZsRE or {{prompt, subject, target_new}} record")
            continue
        requests.append(parse_request(obj, where))
        formats[fmt] = formats.get(fmt, 0) + 1
    if not requests:
        raise InputError(f"{path}: no edit requests ({len(quarantined)} lines not readable as one)")
    return RequestSet(requests, quarantined, formats)
