"""Prompt formats: how one extraction request is asked of a model, and how its answers are read.

A released KnowLM model answers well only when it is asked in the format it was trained on, so
every place that asks a model to extract (``/extract``, ``knowlm extract``, batch extraction,
evaluation, the serve-format instruction rows) goes through this registry::

    fmt = get_format("oneke")
    for p in fmt.prompts("ner", text, ["人物", "地理位置"], "zh"):
        p.prompt          # the exact text the model reads (the tokenizer adds BOS)
        p.labels          # the batch's labels (the keys its answer has)
        p.offset, p.chunk # where the prompt's text chunk starts in the text, and which chunk
        p.answer_kind     # "alpaca-json" | "tuple" | "oneke-json": what the answer looks like
    fmt.read_answer("ner", answer, labels)   # -> parsers.Parsed (status + IE record items)

Formats (``FORMATS``):

* ``alpaca`` — this project's own IE wording (``ie.templates``, fixed template 0) inside KnowLM's
  alpaca template; the default, and today's behaviour exactly.
* ``oneke`` — zjunlp/OneKE: IEPile's JSON instruction in the Llama-2 chat wrapper (``ie.oneke``),
  for NER, RE, EE, EET, EEA and KG; a schema is a label list or a label -> description map;
  optional ``example``; IEPile's split rule (``oneke.SPLIT_NUM``); JSON answers.
* ``zhixi`` — knowlm-13b-zhixi / knowlm-13b-ie: the alpaca template around seed 003's relation
  prompts (``ZHIXI_RE_TEMPLATES`` / ``ZHIXI_RE_FORMATS``; serving uses template 0 and one fixed
  format per language, ``ZHIXI_SERVE``), answers read as tuples. The seed gives no NER or EE table,
  so NER and EE in the zhixi format are this project's own alpaca wording (as ``alpaca``).
* ``chat`` — the served model's tokenizer chat template around the alpaca-format instruction and
  the text as one user message; needs a tokenizer that ships a template (``PromptFormatError``
  otherwise). Its prompts carry ``messages``; ``prompt`` is filled when a tokenizer is given.

A leaf of ``knowlm_ray.ie``: it imports only the IE leaf modules (``oneke``, ``templates``,
``prompts``, ``parsers``, ``schema``) and the alpaca template, so the serving layer, the clients
and the instruction builder can all use it. Constrained decoding maps ``answer_kind`` to a
grammar; nothing here builds one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from knowlm_ray.alpaca import build_prompt
from knowlm_ray.errors import UserError
from knowlm_ray.ie import oneke
from knowlm_ray.ie.parsers import FIELD, Parsed, dedupe, parse_answer
from knowlm_ray.ie.prompts import DEFAULT_MAX_CHARS, SERVE_TEMPLATE, prompt_pairs, split_text
from knowlm_ray.ie.schema import normalize_schema
from knowlm_ray.ie.templates import LANGS, render_output

DEFAULT_FORMAT = "alpaca"

# Answer kinds (what an answer looks like; constrained decoding maps each to a grammar).
ALPACA_JSON = "alpaca-json"  # {"label": [...]} in this project's JSON answer shapes (ie.templates)
TUPLE = "tuple"  # (a,b,c) lines, this project's or ZhiXi's
ONEKE_JSON = "oneke-json"  # OneKE's JSON object: one key per label of the batch, in order


class PromptFormatError(UserError, ValueError):
    """An unknown prompt format, a task the format does not ask, or a chat format without a
    chat template; the message names the field (``prompt_format``)."""


@dataclass
class FormatPrompt:
    """One prompt of one (text chunk, label batch)."""

    prompt: str | None  # the exact model input (None: a chat prompt not rendered yet)
    instruction: str  # alpaca / zhixi / chat: the instruction; oneke: the instruction JSON
    input: str  # the text chunk the prompt asks about
    labels: Any  # the batch's labels: a list, or a dict (EE roles; OneKE described labels)
    offset: int  # where ``input`` starts in the whole text
    chunk: int  # the chunk's index (batches of one chunk share it)
    answer_kind: str
    messages: list[dict[str, str]] | None = field(default=None)  # chat only

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "instruction": self.instruction,
            "input": self.input,
            "labels": self.labels,
            "offset": self.offset,
            "chunk": self.chunk,
            "answer_kind": self.answer_kind,
            **({"messages": self.messages} if self.messages is not None else {}),
        }


# ----------------------------------------------------------------------------- seed 003 tables
# ZhiXi's relation prompts, byte for byte as seed 003 prints them. Note: the seed writes the zh
# templates with ASCII ':' ',' and '?' (and format 2 with an ASCII ':') where KnowLM's
# examples/ie_prompt.py has the full-width '：' '，' '？'; we follow the seed.
ZHIXI_RE_TEMPLATES: dict[str, dict[int, str]] = {
    "zh": {
        0: "已知候选的关系列表:{s_schema},请你根据关系列表,从以下输入中抽取出可能存在的头实体与尾实体,并给出对应的关系三元组。请按照{s_format}的格式回答。",
        1: "我将给你个输入,请根据关系列表:{s_schema},从输入中抽取出可能包含的关系三元组,并以{s_format}的形式回答。",
        2: "我希望你根据关系列表从给定的输入中抽取可能的关系三元组,并以{s_format}的格式回答,关系列表={s_schema}。",
        3: "给定的关系列表是:{s_schema}\n根据关系列表抽取关系三元组,在这个句子中可能包含哪些关系三元组?请以{s_format}的格式回答。",
    },
    "en": {
        0: "Identify the head entities (subjects) and tail entities (objects) in the following text and provide the corresponding relation triples from relation list {s_schema}. Please provide your answer as a list of relation triples in the form of {s_format}.",
        1: "Identify the subjects and objects in the text that are related, and provide the corresponding relation triples from relation {s_schema} in the format of {s_format}.",
        2: "From the given text, extract the possible head entities (subjects) and tail entities (objects) and give the corresponding relation triples. The relations are {s_schema}. Please format your answer as a list of relation triples in the form of {s_format}.",
        3: "Your task is to identify the head entities (subjects) and tail entities (objects) in the following text and extract the corresponding relation triples, the possible relation list is {s_schema}. Your answer should include relation triples, with each triple formatted as {s_format}.",
        4: "Given the text, extract the possible head entities (subjects) and tail entities (objects) and provide the corresponding relation triples, the possible relation list is {s_schema}. Format your answer as a list of relation triples in the form of {s_format}.",
        5: "Your goal is to identify the head entities (subjects) and tail entities (objects) in the text and give the corresponding relation triples. The given relation list is {s_schema}. Please answer with a list of relation triples in the form of {s_format}.",
        6: "Please extract the possible head entities (subjects) and tail entities (objects) from the text and provide the corresponding relation triples from candidate relation list {s_schema}. Your answer should be in the form of a list of relation triples: {s_format}.",
        7: "Your task is to extract the possible head entities (subjects) and tail entities (objects) in the given text and give the corresponding relation triples. The relations are {s_schema}. Please answer using the format of a list of relation triples: {s_format}.",
        8: "Given the {s_schema}, identify the head entities (subjects) and tail entities (objects) and provide the corresponding relation triples. Your answer should consist of relation triples, with each triple formatted as {s_format}",
        9: "Please find the possible head entities (subjects) and tail entities (objects) in the text based on the relation list {s_schema} and give the corresponding relation triples. Please format your answer as a list of relation triples in the form of {s_format}.",
        10: "Given relation list {s_schema}, extract the possible subjects and objects from the text and give the corresponding relation triples in the format of {s_format}.",
        11: "Extract the entities involved in the relationship described in the text and provide the corresponding triples in the format of {s_format}, the possible relation list is {s_schema}.",
        12: "Given relation list {s_schema}, provide relation triples for the entities and their relationship in the text, using the format of {s_format}.",
        13: "Extract the entities and their corresponding relationships from the given relationships are {s_schema} and provide the relation triples in the format of {s_format}.",
    },
}
ZHIXI_RE_FORMATS: dict[str, dict[int, str]] = {
    "zh": {
        0: '"(头实体,关系,尾实体)"',
        2: '"关系:头实体,尾实体\n"',
        3: "JSON字符串[{'head':'', 'relation':'', 'tail':''}, ]",
    },
    "en": {
        0: "{'head':'', 'relation':'', 'tail':''}",
        1: "(Subject, Relation, Object)",
        2: "[Subject, Relation, Object]",
        3: "{head, relation, tail}",
        4: "<head, relation, tail>",
    },
}
# Serving asks with template 0 and a tuple format in both languages (zh 0 "(头实体,关系,尾实体)",
# en 1 "(Subject, Relation, Object)"), so every ZhiXi relation answer is read as tuples.
ZHIXI_SERVE: dict[str, tuple[int, int]] = {"zh": (0, 0), "en": (0, 1)}


def zhixi_schema_text(labels: Sequence[str]) -> str:
    """``s_schema``: the labels as KnowLM's examples show them (Python's list repr)."""
    return str(list(labels))


def zhixi_re_instruction(labels: Sequence[str], lang: str, template: int | None = None, fmt: int | None = None) -> str:
    """``template.format(s_schema=<labels>, s_format=<format string>)`` of seed 003's tables."""
    t0, f0 = ZHIXI_SERVE[lang]
    template = t0 if template is None else template
    fmt = f0 if fmt is None else fmt
    return ZHIXI_RE_TEMPLATES[lang][template].format(
        s_schema=zhixi_schema_text(labels), s_format=ZHIXI_RE_FORMATS[lang][fmt]
    )


# ------------------------------------------------------------------------------------ formats
def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise PromptFormatError(f"lang: must be one of {', '.join(LANGS)}, got {lang!r}")


class PromptFormat:
    """The interface every format has (see the module docstring)."""

    name = ""
    answer_kind = ""  # the kind of most of its answers; each prompt carries its own
    tasks: tuple[str, ...] = ("ner", "re", "ee")
    needs_tokenizer = False

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise PromptFormatError(f"task: prompt_format {self.name!r} asks {', '.join(self.tasks)}, not {task!r}")

    def prompts(
        self,
        task: str,
        text: str,
        schema: Any,
        lang: str,
        *,
        split_num: int | None = None,
        max_chars: int | None = DEFAULT_MAX_CHARS,
        example: list[dict[str, Any]] | None = None,
        fmt: str = "json",
        tokenizer: Any = None,
    ) -> list[FormatPrompt]:
        raise NotImplementedError

    def read_answer(self, task: str, answer: str | None, labels: Any = None) -> Parsed:
        """An answer as IE record items (``parsers.Parsed``); never raises on the text."""
        relation_labels = list(labels) if task == "re" and labels is not None else None
        return parse_answer(task, answer, "auto", relation_labels)

    def render_answer(self, task: str, lang: str, items: Sequence[dict], labels: Any = None, fmt: str = "json") -> str:
        """The gold answer to one prompt in this format's answer form (training rows)."""
        return render_output(task, lang, fmt, items, None if labels is None else list(labels))


class AlpacaFormat(PromptFormat):
    name = "alpaca"
    answer_kind = ALPACA_JSON

    def _pairs(self, task, text, schema, lang, split_num, max_chars, fmt, template=SERVE_TEMPLATE) -> list[dict]:
        self.check_task(task)
        _check_lang(lang)
        return prompt_pairs(
            task,
            text,
            normalize_schema(task, schema),
            lang,
            fmt=fmt,
            template=template,
            split_num=split_num,
            max_chars=max_chars,
        )

    def prompts(
        self,
        task,
        text,
        schema,
        lang,
        *,
        split_num=None,
        max_chars=DEFAULT_MAX_CHARS,
        example=None,
        fmt="json",
        tokenizer=None,
        template=SERVE_TEMPLATE,
    ):
        kind = TUPLE if fmt == "tuple" else ALPACA_JSON
        return [
            FormatPrompt(
                build_prompt(p["instruction"], p["input"]),
                p["instruction"],
                p["input"],
                p["labels"],
                p["offset"],
                p["chunk"],
                kind,
            )
            for p in self._pairs(task, text, schema, lang, split_num, max_chars, fmt, template)
        ]


class ZhixiFormat(AlpacaFormat):
    name = "zhixi"
    answer_kind = TUPLE

    def prompts(
        self,
        task,
        text,
        schema,
        lang,
        *,
        split_num=None,
        max_chars=DEFAULT_MAX_CHARS,
        example=None,
        fmt="json",
        tokenizer=None,
    ):
        if task != "re":  # the seed has no NER / EE table: this project's alpaca wording
            return super().prompts(task, text, schema, lang, split_num=split_num, max_chars=max_chars, fmt=fmt)
        out = []
        for p in self._pairs(task, text, schema, lang, split_num, max_chars, "tuple"):
            instruction = zhixi_re_instruction(p["labels"], lang)
            out.append(
                FormatPrompt(
                    build_prompt(instruction, p["input"]),
                    instruction,
                    p["input"],
                    p["labels"],
                    p["offset"],
                    p["chunk"],
                    TUPLE,
                )
            )
        return out

    def read_answer(self, task, answer, labels=None):
        if task == "re":
            return parse_answer(task, answer, "tuple", list(labels) if labels is not None else None)
        return super().read_answer(task, answer, labels)

    def render_answer(self, task, lang, items, labels=None, fmt="json"):
        if task == "re":  # the serving formats: "(head,relation,tail)" zh, "(head, relation, tail)" en
            sep = "," if lang == "zh" else ", "
            return "\n".join(f"({r['head']}{sep}{r['relation']}{sep}{r['tail']})" for r in items) or (
                "无" if lang == "zh" else "None"
            )
        return super().render_answer(task, lang, items, labels, fmt)


class OneKEFormat(PromptFormat):
    name = "oneke"
    answer_kind = ONEKE_JSON
    tasks = oneke.TASKS

    @staticmethod
    def _schema(task: str, schema: Any) -> Any:
        """Checked the way /extract checks schemas; a NER / RE description map stays a map."""
        if task == "ee":
            return normalize_schema(task, schema)  # {type: roles}; oneke.schema_items makes its items
        if task in ("ner", "re"):
            normalize_schema(task, schema)  # raises SchemaError naming the problem
            return (
                schema
                if isinstance(schema, dict)
                else [s.strip() for s in ([schema] if isinstance(schema, str) else schema)]
            )
        if not schema or not isinstance(schema, (list, dict)):
            raise PromptFormatError("schema: must be a non-empty list (or object) of labels")
        return schema

    def prompts(
        self,
        task,
        text,
        schema,
        lang,
        *,
        split_num=None,
        max_chars=DEFAULT_MAX_CHARS,
        example=None,
        fmt="json",
        tokenizer=None,
    ):
        self.check_task(task)
        _check_lang(lang)
        shaped = self._schema(task, schema)
        out = []
        for ci, (offset, chunk) in enumerate(split_text(text, lang, max_chars)):
            if not chunk.strip():
                continue
            for p in oneke.prompts(task, chunk, shaped, lang, split_num=split_num, example=example):
                out.append(FormatPrompt(p["prompt"], p["instruction"], chunk, p["labels"], offset, ci, ONEKE_JSON))
        return out

    def read_answer(self, task, answer, labels=None):
        ok, items = oneke.read_answer(task, (answer or "").strip())
        if not ok:
            return Parsed([], "unparsed", "none")
        if task in FIELD:
            items = dedupe(task, items)
        return Parsed(items, "ok" if items else "none", "json")

    def render_answer(self, task, lang, items, labels=None, fmt="json"):
        """OneKE's answer object: every label of the batch, in order, empty lists included."""
        keys = oneke.answer_keys(task, labels) if labels is not None else []
        obj: dict[str, Any] = {k: [] for k in keys}
        for it in items:
            if task == "ner":
                obj.setdefault(it["type"], []).append(it["text"])
            elif task == "re":
                obj.setdefault(it["relation"], []).append({"subject": it["head"], "object": it["tail"]})
            elif task == "eet":
                obj.setdefault(it["type"], []).append(it["trigger"])
            else:
                roles: dict[str, Any] = {}
                for a in it.get("arguments", []):
                    prev = roles.get(a["role"])
                    roles[a["role"]] = (
                        a["text"] if prev is None else [*([prev] if isinstance(prev, str) else prev), a["text"]]
                    )
                obj.setdefault(it["type"], []).append({"trigger": it["trigger"], "arguments": roles})
        return json.dumps(obj, ensure_ascii=False)


class ChatFormat(AlpacaFormat):
    name = "chat"
    answer_kind = ALPACA_JSON
    needs_tokenizer = True

    @staticmethod
    def user_message(instruction: str, text: str) -> str:
        """The alpaca-format instruction and the text as one user message."""
        return f"{instruction}\n\n{text}"

    def prompts(
        self,
        task,
        text,
        schema,
        lang,
        *,
        split_num=None,
        max_chars=DEFAULT_MAX_CHARS,
        example=None,
        fmt="json",
        tokenizer=None,
    ):
        out = []
        for p in super().prompts(task, text, schema, lang, split_num=split_num, max_chars=max_chars, fmt=fmt):
            p.messages = [{"role": "user", "content": self.user_message(p.instruction, p.input)}]
            p.prompt = None
            out.append(p)
        if tokenizer is not None:
            render_chat_prompts(out, tokenizer)
        return out


def render_chat_prompts(prompts: Sequence[FormatPrompt], tokenizer: Any) -> None:
    """Fill ``prompt`` of chat prompts from the tokenizer's chat template (a leading BOS token
    is left out: the engine's tokenizer adds BOS itself)."""
    if not getattr(tokenizer, "chat_template", None):
        raise PromptFormatError(
            "prompt_format: 'chat' needs a tokenizer that ships a chat template, and this model's has none; "
            f"use one of {', '.join(n for n in FORMATS if n != 'chat')}"
        )
    bos = getattr(tokenizer, "bos_token", None)
    for p in prompts:
        if p.messages is None:
            continue
        text = tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
        p.prompt = text[len(bos) :] if bos and text.startswith(bos) else text


FORMATS: dict[str, PromptFormat] = {f.name: f for f in (AlpacaFormat(), OneKEFormat(), ZhixiFormat(), ChatFormat())}
NAMES = tuple(FORMATS)


def check_format_name(name: Any, field_name: str = "prompt_format") -> str:
    if not isinstance(name, str) or name not in FORMATS:
        raise PromptFormatError(f"{field_name}: must be one of {', '.join(NAMES)}, got {name!r}")
    return name


def get_format(name: str | None) -> PromptFormat:
    """The registered format ``name`` (None: the default, ``alpaca``)."""
    return FORMATS[check_format_name(DEFAULT_FORMAT if name is None else name)]


# ------------------------------------------------------------------------ training rows
def _in_batch(task: str, item: dict, batch: set, chunk: str) -> bool:
    if task == "ner":
        return item["type"] in batch and item["text"] in chunk
    if task == "re":
        return item["relation"] in batch and item["head"] in chunk and item["tail"] in chunk
    return item["type"] in batch and item["trigger"] in chunk


def serve_rows(
    records: Sequence[dict[str, Any]],
    task: str,
    labels: Any,
    lang: str,
    *,
    prompt_format: str | None = None,
    fmt: str = "json",
    max_chars: int | None = DEFAULT_MAX_CHARS,
    split_num: int | None = None,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """Training rows that ask exactly what ``/extract`` asks in ``prompt_format``: the same
    prompts (label batches in the given order, text chunks), each answered with the record's gold
    items of that batch that lie in that chunk, in the format's answer form (``render_answer``).

    Each row: ``prompt`` (the exact model input; training uses it as the prompt), ``instruction``
    / ``input`` (alpaca-template formats: the template's halves; oneke: the instruction JSON and
    ""), ``output``, ``task``, ``lang``, ``format``, ``prompt_format``, ``id``, ``labels``. For
    ``alpaca`` the rows equal ``ie.prompts.serve_format_instructions``' (plus ``prompt`` and
    ``prompt_format``).
    """
    pf = get_format(prompt_format)
    field_name = FIELD.get(task, "events")
    rows = []
    for rec in records:
        for p in pf.prompts(task, rec["text"], labels, lang, split_num=split_num, max_chars=max_chars, fmt=fmt):
            if pf.needs_tokenizer and tokenizer is not None:
                render_chat_prompts([p], tokenizer)
            batch = set(p.labels)
            items = [x for x in rec.get(field_name) or [] if _in_batch(task, x, batch, p.input)]
            rows.append(
                {
                    "prompt": p.prompt,
                    "instruction": p.instruction,
                    "input": "" if pf.name == "oneke" else p.input,
                    "output": pf.render_answer(task, lang, items, p.labels, fmt),
                    "task": task,
                    "lang": lang,
                    "format": "tuple" if p.answer_kind == TUPLE else fmt,
                    "prompt_format": pf.name,
                    "id": rec["id"],
                    "labels": p.labels,
                }
            )
    return rows
