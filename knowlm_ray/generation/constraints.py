"""Constrained decoding: a per-row logits mask that keeps an answer inside a JSON schema, any JSON
object, or a tuple grammar, and closes it within the row's token budget.

A request carries a ``ConstraintSpec`` (what the answer must look like); the engine compiles it
once (``Vocab.compile``, cached by spec) into a ``Compiled`` constraint that ``Prepared`` carries;
each decoding row then ``start()``s its own ``RowConstraint``, which both decode paths drive the
same way (``RowState.constraint``):

- ``forced()``: a token the row must take now (budget closing), or None;
- ``mask_(scores)``: set the logits of tokens the grammar (and span mode) forbids to -inf;
- ``settle(token)``: the picked token, or the first token of the closing sequence when taking
  the pick would leave too little budget to close the structure;
- ``advance(token)``: record the taken token; True when the structure is complete (a JSON answer
  stops at its closing brace, without an EOS token).

**The grammar engine** is llguidance (``LLMatcher``; chosen by measurement, see BENCHMARKS.md):
it gives the token mask for the schema or Lark grammar. JSON is written with fixed separators
(``", "`` and ``": "``, as Python's ``json.dumps``), no other whitespace, no ``\\u`` escapes, object
keys in the schema's order.

**Budget closing** is this module's own: a shadow parser (``_Frame`` stack) follows the bytes the
row emits and can always name the shortest completion to an accepting state (close an open
string, finishing a cut UTF-8 character; add the required keys still missing with their minimal
values; close lists and objects; the tuple form: the missing fields, then ``)``). Its greedy
tokenisation is the closing cost. Invariant: closing cost <= budget left. A picked token is taken
only if the closing cost after it still fits in the budget that remains after it; otherwise the
row switches to closing mode and is fed the closing tokens, one per step. A spec whose shortest
answer does not fit ``max_tokens`` is refused up front (``ConstraintError``).

**Span mode** (``span_text``): every mention string (strings marked as mentions: ``x-span`` in a
schema, the free fields of a tuple) must be a substring of the text: a token is allowed inside one
only if the mention so far, extended by the token's bytes up to the string's end, is a substring
of the text (bytes), combined with the grammar's mask.

Supported JSON schema subset (what the closer can close): ``type`` object / array / string /
number / integer / boolean / null (or a list of them), ``properties``, ``required``,
``additionalProperties`` (false, true or a schema), ``items``, ``minItems``, ``maxItems``,
``enum`` / ``const`` of strings, ``anyOf`` / ``oneOf`` whose options start differently
(distinct JSON types), ``$defs`` / ``$ref`` (non-recursive), ``x-span``; ``title``,
``description``, ``default``, ``examples`` and ``$schema`` are ignored. Anything else
(``pattern``, ``format``, ``minLength``, ``minimum``...) is refused with the keyword named.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

JSON_OPTIONS = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "json_allowed_escapes": 'nrbtf\\"',  # no \u: the closer never has to finish one
}
KINDS = ("json_schema", "json_object", "tuple")
SPAN_KEY = "x-span"
_IGNORED = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "strict"}
_TUPLE_SYNTAX = b"(),[]\n"


class ConstraintError(ValueError):
    """A constraint that cannot be honoured: an unsupported schema keyword, a budget below the
    shortest answer, beam search. The message names what (the caller maps it to a 400)."""


# ------------------------------------------------------------------------------ the spec
@dataclass(frozen=True)
class TupleShape:
    """One tuple answer form: ``(field,field,...)`` lines, or ``none`` for no answer.

    ``fields``: ``"span"`` (a mention: free text, or a substring of the text in span mode),
    ``"text"`` (free text), a tuple of label strings (one of them), or
    ``("list", TupleShape)`` for a bracketed list of inner tuples (an event's arguments)."""

    fields: tuple
    sep: str = ","
    none: str | None = None  # the whole answer when nothing is found ("无" / "None")


@dataclass(frozen=True)
class ConstraintSpec:
    """What an answer must be: ``kind`` json_schema (``schema``), json_object (any JSON object)
    or tuple (``shape``); ``span_text``: mentions must be substrings of it (span mode)."""

    kind: str
    schema: Any = None  # a JSON schema dict (json_schema)
    shape: TupleShape | None = None  # tuple
    span_text: str | None = None

    def key(self) -> str:
        return json.dumps(
            [self.kind, self.schema, repr(self.shape), self.span_text], ensure_ascii=False, sort_keys=True
        )


# ------------------------------------------------------------------------------ shape nodes
@dataclass
class _Node:
    kind: str  # obj arr str num bool null any anyof tuples tuple bare label list
    props: list = field(default_factory=list)  # obj: [(name bytes, node, required)]
    additional: Any = None  # obj: None (no others) or a node
    item: Any = None  # arr / tuples / list: the item node
    min_items: int = 0
    max_items: int | None = None
    enum: tuple = ()  # str / label: allowed values (bytes); empty: free
    span: bool = False
    options: list = field(default_factory=list)  # anyof; tuple: fields
    sep: bytes = b","
    none: bytes | None = None
    _min: bytes | None = None

    def min_bytes(self) -> bytes:
        if self._min is None:
            self._min = _min_bytes(self)
        return self._min


def _min_bytes(n: _Node) -> bytes:
    k = n.kind
    if k == "obj":
        inner = b", ".join(_key(name) + b": " + node.min_bytes() for name, node, req in n.props if req)
        return b"{" + inner + b"}"
    if k == "arr":
        return b"[" + b", ".join([n.item.min_bytes()] * n.min_items) + b"]"
    if k == "str":
        return _key(min(n.enum, key=len)) if n.enum else b'""'
    if k == "num":
        return b"0"
    if k == "bool":
        return b"true"
    if k in ("null", "any"):
        return b"null"
    if k == "anyof":
        return min((o.min_bytes() for o in n.options), key=len)
    if k == "tuples":
        item = n.item.min_bytes()
        return n.none if n.none is not None and len(n.none) <= len(item) else item
    if k == "tuple":
        return b"(" + n.sep.join(f.min_bytes() for f in n.options) + b")"
    if k == "bare":
        return b"-"  # one character (span mode: see _BareFrame.tail)
    if k == "label":
        return min(n.enum, key=len)
    if k == "list":
        return b"[]"
    raise AssertionError(k)


@functools.lru_cache(maxsize=4096)
def _key(name: bytes) -> bytes:
    return json.dumps(name.decode("utf-8"), ensure_ascii=False).encode("utf-8")


@functools.lru_cache(maxsize=4096)
def _unkey(key: bytes) -> bytes:
    """A key string's bytes as written (escapes included) -> the property name's bytes."""
    return json.loads(b'"' + key + b'"').encode("utf-8")


_TYPES = {"object": "obj", "array": "arr", "string": "str", "number": "num", "integer": "num", "boolean": "bool"}


def _schema_node(schema: Any, defs: dict, path: str, span: bool = False, depth: int = 0) -> _Node:
    if depth > 32:
        raise ConstraintError(f"{path}: schema nests too deep (or $ref is recursive)")
    if schema is True or schema == {}:
        return _Node("any")
    if not isinstance(schema, dict):
        raise ConstraintError(f"{path}: a schema must be an object")
    if "$ref" in schema:
        ref = schema["$ref"]
        name = (
            ref.rsplit("/", 1)[-1] if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")) else None
        )
        if name is None or name not in defs:
            raise ConstraintError(f"{path}.$ref: only local #/$defs/NAME references are supported, got {ref!r}")
        return _schema_node(defs[name], defs, f"{path}.$ref", span, depth + 1)
    span = bool(schema.get(SPAN_KEY, span))
    for alt in ("anyOf", "oneOf"):
        if alt in schema:
            opts = [_schema_node(s, defs, f"{path}.{alt}[{i}]", span, depth + 1) for i, s in enumerate(schema[alt])]
            return _anyof(opts, f"{path}.{alt}")
    known = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum"}
    known |= {"const", "$defs", "definitions", SPAN_KEY}
    for key in schema:
        if key not in known and key not in _IGNORED:
            raise ConstraintError(f"{path}.{key}: not supported by constrained decoding")
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if not values or not all(isinstance(v, str) for v in values):
            raise ConstraintError(f"{path}.enum: only non-empty lists of strings are supported")
        return _Node("str", enum=tuple(v.encode("utf-8") for v in values))
    t = schema.get("type")
    if isinstance(t, list):
        return _anyof([_schema_node({**schema, "type": x}, defs, path, span, depth + 1) for x in t], f"{path}.type")
    if t is None:
        if "properties" in schema:
            t = "object"
        elif "items" in schema:
            t = "array"
        else:
            return _Node("any")
    if t == "null":
        return _Node("null")
    if t not in _TYPES:
        raise ConstraintError(f"{path}.type: unknown type {t!r}")
    kind = _TYPES[t]
    if kind == "obj":
        props = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(props, dict) or not isinstance(required, list):
            raise ConstraintError(f"{path}: properties must be an object and required a list")
        for r in required:
            if r not in props:
                raise ConstraintError(f"{path}.required: {r!r} is not among the properties")
        nodes = [
            (k.encode("utf-8"), _schema_node(v, defs, f"{path}.properties.{k}", span, depth + 1), k in required)
            for k, v in props.items()
        ]
        add = schema.get("additionalProperties", not props)
        if add is False:
            additional = None
        elif add is True:
            additional = _Node("any")
        else:
            additional = _schema_node(add, defs, f"{path}.additionalProperties", span, depth + 1)
        return _Node("obj", props=nodes, additional=additional)
    if kind == "arr":
        mn, mx = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(mn, int) or mn < 0 or (mx is not None and (not isinstance(mx, int) or mx < max(mn, 1))):
            raise ConstraintError(f"{path}: minItems / maxItems must be integers with 0 <= minItems <= maxItems")
        item = _schema_node(schema.get("items", True), defs, f"{path}.items", span, depth + 1)
        return _Node("arr", item=item, min_items=mn, max_items=mx)
    if kind == "str":
        return _Node("str", span=span)
    return _Node(kind)


_FIRST = {"obj": "{", "arr": "[", "str": '"', "num": "0", "bool": "t", "null": "n", "any": "*"}


def _anyof(opts: list[_Node], path: str) -> _Node:
    flat: list[_Node] = []
    for o in opts:
        flat.extend(o.options if o.kind == "anyof" else [o])
    firsts = [_FIRST[o.kind] for o in flat]
    if "*" in firsts or len(set(firsts)) != len(firsts):
        raise ConstraintError(
            f"{path}: the options must be of different JSON types (the closer tells them apart by their first character)"
        )
    return _Node("anyof", options=flat)


def _grammar_schema(schema: Any) -> Any:
    """The schema as llguidance gets it: our own keyword removed."""
    if isinstance(schema, dict):
        return {k: _grammar_schema(v) for k, v in schema.items() if k != SPAN_KEY and k != "strict"}
    if isinstance(schema, list):
        return [_grammar_schema(v) for v in schema]
    return schema


def _tuple_node(shape: TupleShape) -> _Node:
    def fields(s: TupleShape) -> _Node:
        out = []
        for f in s.fields:
            if f in ("span", "text"):  # a mention; free text
                out.append(_Node("bare", span=f == "span"))
            elif isinstance(f, tuple) and f and f[0] == "list":
                out.append(_Node("list", item=fields(f[1])))
            else:
                labels = tuple(x.encode("utf-8") for x in f)
                if not labels or any(not x or set(x) & set(_TUPLE_SYNTAX) for x in labels):
                    raise ConstraintError(f"tuple labels must be non-empty and free of {_TUPLE_SYNTAX!r}")
                out.append(_Node("label", enum=labels))
        return _Node("tuple", options=out, sep=s.sep.encode("utf-8"))

    return _Node("tuples", item=fields(shape), none=shape.none.encode("utf-8") if shape.none else None)


def _lark(shape: TupleShape) -> str:
    rules: list[str] = []

    def lit(s: str) -> str:
        return json.dumps(s, ensure_ascii=False)

    def tuple_rule(s: TupleShape, name: str) -> str:
        parts = []
        for i, f in enumerate(s.fields):
            if f in ("span", "text"):
                parts.append("BARE")
            elif isinstance(f, tuple) and f and f[0] == "list":
                inner = tuple_rule(f[1], f"{name}_{i}")
                parts.append(f'"[" ({inner} ("," {inner})*)? "]"')
            else:
                rules.append(f"{name.upper()}_L{i}: " + " | ".join(lit(x) for x in f))
                parts.append(f"{name.upper()}_L{i}")
        rules.append(
            f"{name}: " + lit("(") + f" {lit(s.sep)} ".join([""] + parts)[len(lit(s.sep)) + 2 :] + " " + lit(")")
        )
        return name

    tuple_rule(shape, "item")
    start = 'item ("\\n" item)*'
    if shape.none:
        start = f"{lit(shape.none)} | {start}"
    return "\n".join([f"start: {start}", *rules, r"BARE: /[^(),\[\]\n]+/"])


# ------------------------------------------------------------------------------ the shadow parser
class SpanViolation(Exception):
    """A mention left the text (raised by the shadow parser while simulating a token)."""


class _Span:
    """The text a row's mentions must be substrings of, and the token sets that keep them so."""

    def __init__(self, text: str, vocab: Vocab):
        self.text = text.encode("utf-8")
        self.vocab = vocab
        self._cache: OrderedDict[tuple, Any] = OrderedDict()

    def ok(self, buf: bytes) -> bool:
        return buf in self.text

    def complete(self, buf: bytes) -> bytes:
        """Finish a cut character of ``buf`` (a substring) with the text's own next bytes."""
        need = _utf8_tail(buf)
        if not need:
            return b""
        i = self.text.find(buf)
        return self.text[i + len(buf) : i + len(buf) + len(need)] if i >= 0 else need

    def first_char(self, avoid: bytes) -> bytes:
        for ch in self.text.decode("utf-8", errors="ignore"):
            b = ch.encode("utf-8")
            if not (set(b) & set(avoid)) and ord(ch) >= 0x20:
                return b
        return b""

    def allowed(self, buf: bytes, stops: bytes, breaks: bytes):
        """A bool tensor over the vocabulary: tokens whose bytes, up to the first of ``stops``
        (the mention's end), extend ``buf`` to a substring of the text; the text is not followed
        past ``breaks`` (bytes a mention cannot hold as they are)."""
        key = (buf, stops)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        import torch

        v, text, n = self.vocab, self.text, len(buf)
        if n == 0:
            ends: Any = range(len(text) + 1)
        else:
            ends, i = [], text.find(buf)
            while i >= 0:
                ends.append(i + n)
                i = text.find(buf, i + 1)
        ids: set[int] = set()
        for s in stops:  # the mention ends here (the grammar decides what may follow)
            sub = v.trie[0].get(s)
            if sub is not None:
                ids.update(v.subtree(sub))
        for j in ends:
            node, d = v.trie, 0
            while j + d < len(text) and text[j + d] not in breaks:
                node = node[0].get(text[j + d])
                if node is None:
                    break
                d += 1
                if node[1]:
                    ids.update(node[1])
                for s in stops:
                    sub = node[0].get(s)
                    if sub is not None:
                        ids.update(v.subtree(sub))
        mask = torch.zeros(v.size, dtype=torch.bool)
        if ids:
            mask[torch.tensor(sorted(ids))] = True
        self._cache[key] = mask
        if len(self._cache) > 256:
            self._cache.popitem(last=False)
        return mask


def _utf8_tail(buf: bytes) -> bytes:
    """Continuation bytes that finish a UTF-8 character cut at the end of ``buf``."""
    for back in range(1, min(4, len(buf)) + 1):
        lead = buf[-back]
        if lead < 0x80:
            return b""
        if lead >= 0xC0:
            need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            missing = need - back
            if missing <= 0:
                return b""
            first = 0x80
            if back == 1 and lead in (0xE0, 0xF0):
                first = 0xA0 if lead == 0xE0 else 0x90
            return bytes([first]) + b"\x80" * (missing - 1)
    return b""


class _Frame:
    """One open construct of the answer. ``feed`` returns False when the frame is complete and
    the byte belongs to its parent; ``tail`` is the shortest completion of the frame itself
    (its child, the frame above it, already completed)."""

    def feed(self, b: int, st: list) -> bool:
        raise NotImplementedError

    def tail(self) -> bytes:
        raise NotImplementedError

    def child_done(self, st: list, key: bytes | None = None) -> None:
        pass


def _done(st: list, key: bytes | None = None) -> None:
    st.pop()
    st[-1].child_done(st, key)


class _Lit(_Frame):
    def __init__(self, rest: bytes):
        self.rest = rest

    def feed(self, b, st):
        if not self.rest or self.rest[0] != b:
            raise AssertionError("shadow parser out of step with the grammar")
        self.rest = self.rest[1:]
        if not self.rest:
            _done(st)
        return True

    def tail(self):
        return self.rest


class _Str(_Frame):
    """A JSON string after its opening quote: a key (``names``), an enum, a mention or free."""

    def __init__(self, enum: tuple | list = (), span: _Span | None = None, key: bool = False):
        self.enum, self.span, self.key, self.buf, self.esc = tuple(enum), span, key, b"", False

    def feed(self, b, st):
        if self.esc:
            self.esc = False
            self.buf += b"\\" + bytes([b])
            return True
        if b == 0x5C:
            if self.span is not None:
                raise SpanViolation
            self.esc = True
            return True
        if b == 0x22:
            _done(st, self.buf if self.key else None)
            return True
        self.buf += bytes([b])
        if self.span is not None and not self.span.ok(self.buf):
            raise SpanViolation
        return True

    def tail(self):
        if self.esc:
            return b'n"'
        if self.enum:
            cands = [e for e in self.enum if _key(e)[1:-1].startswith(self.buf)]
            if cands:
                return _key(min(cands, key=len))[1 + len(self.buf) :]
        if self.span is not None:
            return self.span.complete(self.buf) + b'"'
        return _utf8_tail(self.buf) + b'"'


class _Num(_Frame):
    def __init__(self, first: int):
        self.buf = bytes([first])

    def feed(self, b, st):
        if b in b"0123456789+-.eE":
            self.buf += bytes([b])
            return True
        return False

    def tail(self):
        return b"0" if self.buf[-1:] in (b"-", b"+", b".", b"e", b"E") else b""


def _starts(node: _Node, b: int) -> bool:
    return {"obj": b == 0x7B, "arr": b == 0x5B, "str": b == 0x22, "num": b in b"-0123456789"}.get(
        node.kind, node.kind == "bool" and b in b"tf" or node.kind == "null" and b == 0x6E
    )


_ANY = {0x7B: "obj", 0x5B: "arr", 0x22: "str", 0x74: "bool", 0x66: "bool", 0x6E: "null"}


class _Value(_Frame):
    """Expecting a value of ``node``; replaced by the frame its first byte opens."""

    def __init__(self, node: _Node, span: _Span | None):
        self.node, self.span = node, span

    def feed(self, b, st):
        node = self.node
        if node.kind == "anyof":
            node = next((o for o in node.options if _starts(o, b)), None)
            if node is None:
                raise AssertionError("shadow parser: no option starts with this byte")
        if node.kind == "any":
            k = _ANY.get(b, "num")
            node = _Node(k, additional=_Node("any"), item=_Node("any")) if k in ("obj", "arr") else _Node(k)
        k = node.kind
        if k == "obj":
            st[-1] = _Obj(node, self.span)
        elif k == "arr":
            st[-1] = _Arr(node, self.span)
        elif k == "str":
            st[-1] = _Str(node.enum, self.span if node.span and not node.enum else None)
        elif k == "num":
            st[-1] = _Num(b)
        else:
            lit = b"true" if b == 0x74 else b"false" if b == 0x66 else b"null"
            st[-1] = _Lit(lit[1:])
        return True

    def tail(self):
        return self.node.min_bytes()


class _Obj(_Frame):
    def __init__(self, node: _Node, span: _Span | None):
        self.node, self.span = node, span
        self.state = "open"  # open | key | colon | colon_sp | value | after | comma_sp
        self.idx = -1  # index of the last declared property written
        self.pending: _Node | None = None

    def _eligible(self) -> list[int]:
        out = []
        for i in range(self.idx + 1, len(self.node.props)):
            out.append(i)
            if self.node.props[i][2]:
                break
        return out

    def _rest(self, idx: int | None = None) -> bytes:
        """The required properties after ``idx`` with their minimal values, then ``}``."""
        idx = self.idx if idx is None else idx
        memo = self.node.__dict__.setdefault("_rest", {})
        out = memo.get(idx)
        if out is None:
            out = b""
            for name, node, req in self.node.props[idx + 1 :]:
                if req:
                    out += b", " + _key(name) + b": " + node.min_bytes()
            out = memo[idx] = out + b"}"
        return out

    def feed(self, b, st):
        s = self.state
        if s in ("open", "key") and b == 0x22:
            names = [self.node.props[i][0] for i in self._eligible()]
            self.state = "colon"
            st.append(_Str(names if self.node.additional is None else (), key=True))
            return True
        if s in ("open", "after") and b == 0x7D:
            _done(st)
        elif s == "after" and b == 0x2C:
            self.state = "comma_sp"
        elif s == "comma_sp" and b == 0x20:
            self.state = "key"
        elif s == "colon" and b == 0x3A:
            self.state = "colon_sp"
        elif s == "colon_sp" and b == 0x20:
            self.state = "value"
            st.append(_Value(self.pending, self.span))
        else:
            raise AssertionError(f"shadow parser: byte {b!r} in object state {s}")
        return True

    def _prop(self, key: bytes) -> tuple[int, _Node]:
        name = _unkey(key)
        for i in self._eligible():
            if self.node.props[i][0] == name:
                return i, self.node.props[i][1]
        return self.idx, self.node.additional

    def child_done(self, st, key=None):
        if self.state == "colon" and key is not None:
            self.idx, self.pending = self._prop(key)
        elif self.state == "value":
            self.state = "after"

    def key_tail(self, key: _Str) -> bytes:
        """Completion while the key string is open: finish the key, its minimal value, the rest."""
        t = key.tail()
        idx, node = self._prop(key.buf + t[:-1])
        return t + b": " + node.min_bytes() + self._rest(idx)

    def tail(self):
        s = self.state
        if s == "open":
            rest = self._rest()
            return rest[2:] if rest.startswith(b", ") else rest
        if s in ("key", "comma_sp"):
            pre = b" " if s == "comma_sp" else b""
            el = self._eligible()
            if el:
                i = el[-1] if self.node.props[el[-1]][2] else min(el, key=lambda j: len(self.node.props[j][0]))
                name, node, _ = self.node.props[i]
                return pre + _key(name) + b": " + node.min_bytes() + self._rest(i)
            return pre + b'"": ' + self.node.additional.min_bytes() + b"}"
        if s == "colon":  # the key is complete (an open key is handled by key_tail)
            return b": " + self.pending.min_bytes() + self._rest()
        if s == "colon_sp":
            return b" " + self.pending.min_bytes() + self._rest()
        return self._rest()  # value (the child completes it) or after


class _Arr(_Frame):
    def __init__(self, node: _Node, span: _Span | None):
        self.node, self.span, self.state, self.count = node, span, "open", 0

    def feed(self, b, st):
        s = self.state
        if s in ("open", "after") and b == 0x5D:
            _done(st)
        elif s == "after" and b == 0x2C:
            self.state = "comma_sp"
        elif s == "comma_sp" and b == 0x20:
            self.state = "need"
        elif s in ("open", "need"):
            self.state = "value"
            st.append(_Value(self.node.item, self.span))
            return st[-1].feed(b, st)
        else:
            raise AssertionError(f"shadow parser: byte {b!r} in array state {s}")
        return True

    def child_done(self, st, key=None):
        self.count += 1
        self.state = "after"

    def tail(self):
        item = self.node.item.min_bytes()
        s = self.state
        have = self.count + (1 if s in ("value", "comma_sp", "need") else 0)
        more = b"".join(b", " + item for _ in range(max(self.node.min_items - have, 0))) + b"]"
        if s == "open":
            return b", ".join([item] * self.node.min_items) + b"]"
        if s == "comma_sp":
            return b" " + item + more
        if s == "need":
            return item + more
        return more


class _Root(_Frame):
    """The bottom of the stack: the answer, then nothing more."""

    def __init__(self, node: _Node, span: _Span | None):
        self.node, self.span, self.started, self.done = node, span, False, False

    def feed(self, b, st):
        if self.started:
            raise AssertionError("shadow parser: bytes after the end of the answer")
        self.started = True
        st.append(_Tuples(self.node, self.span) if self.node.kind == "tuples" else _Value(self.node, self.span))
        return st[-1].feed(b, st)

    def child_done(self, st, key=None):
        self.done = True

    def tail(self):
        return b"" if self.started else self.node.min_bytes()


# -- the tuple form
def _field_min(f: _Node, span: _Span | None) -> bytes:
    if f.kind == "bare":
        return (span.first_char(_TUPLE_SYNTAX) if span is not None and f.span else b"") or b"-"
    if f.kind == "list":
        return b"[]"
    return min(f.enum, key=len)


def _tuple_min(t: _Node, span: _Span | None) -> bytes:
    return b"(" + t.sep.join(_field_min(f, span) for f in t.options) + b")"


class _Tuples(_Frame):
    """Lines of tuples, or the none-answer; never complete by itself (another line may follow)."""

    def __init__(self, node: _Node, span: _Span | None):
        self.node, self.span, self.state = node, span, "open"  # open | item | none | after | need

    def feed(self, b, st):
        s = self.state
        if s in ("open", "need") and b == 0x28:
            self.state = "item"
            st.append(_Tuple(self.node.item, self.span))
        elif s == "open" and self.node.none is not None and b == self.node.none[0]:
            self.state = "none"
            if len(self.node.none) > 1:
                st.append(_Lit(self.node.none[1:]))
        elif s == "after" and b == 0x0A:
            self.state = "need"
        else:
            raise AssertionError(f"shadow parser: byte {b!r} in tuple lines state {s}")
        return True

    def child_done(self, st, key=None):
        self.state = "after" if self.state == "item" else "none"

    def tail(self):
        if self.state == "open":
            return self.node.none if self.node.none is not None else _tuple_min(self.node.item, self.span)
        if self.state == "need":
            return _tuple_min(self.node.item, self.span)
        return b""


class _Tuple(_Frame):
    """Inside ``(``: waiting for field ``i`` (``infield``), its frame open above, or the
    separator after it (``sep_left``: what of it is still to come)."""

    def __init__(self, node: _Node, span: _Span | None):
        self.node, self.span, self.i, self.sep_left, self.infield = node, span, 0, b"", True

    def feed(self, b, st):
        if self.sep_left:
            if b != self.sep_left[0]:
                raise AssertionError("shadow parser: bad tuple separator")
            self.sep_left = self.sep_left[1:]
            if not self.sep_left:
                self.i, self.infield = self.i + 1, True
            return True
        if self.infield:
            f = self.node.options[self.i]
            self.infield = False
            if f.kind == "bare":
                st.append(_Bare(self.span if f.span else None))
            elif f.kind == "label":
                st.append(_Label(f))
            else:
                st.append(_List(f, self.span))
            return st[-1].feed(b, st)
        last = self.i == len(self.node.options) - 1
        if last and b == 0x29:
            _done(st)
        elif not last and b == self.node.sep[0]:
            self.sep_left = self.node.sep[1:]
            if not self.sep_left:
                self.i, self.infield = self.i + 1, True
        else:
            raise AssertionError(f"shadow parser: byte {b!r} after tuple field {self.i}")
        return True

    def tail(self):
        fields = self.node.options
        if self.sep_left:
            own, nxt = self.sep_left + _field_min(fields[self.i + 1], self.span), self.i + 2
        elif self.infield:
            own, nxt = _field_min(fields[self.i], self.span), self.i + 1
        else:
            own, nxt = b"", self.i + 1
        return own + b"".join(self.node.sep + _field_min(f, self.span) for f in fields[nxt:]) + b")"


class _Bare(_Frame):
    def __init__(self, span: _Span | None):
        self.span, self.buf = span, b""

    def feed(self, b, st):
        if b in _TUPLE_SYNTAX:
            if not self.buf:
                raise AssertionError("shadow parser: empty tuple field")
            return False
        self.buf += bytes([b])
        if self.span is not None and not self.span.ok(self.buf):
            raise SpanViolation
        return True

    def tail(self):
        return self.span.complete(self.buf) if self.span is not None else _utf8_tail(self.buf)


class _Label(_Frame):
    def __init__(self, node: _Node):
        self.node, self.buf = node, b""

    def feed(self, b, st):
        if b in _TUPLE_SYNTAX and self.buf in self.node.enum:
            return False
        self.buf += bytes([b])
        return True

    def tail(self):
        cands = [e for e in self.node.enum if e.startswith(self.buf)]
        return min(cands, key=len)[len(self.buf) :] if cands else b""


class _List(_Frame):
    """``[(a,b),(c,d)]`` inside a tuple (an event's arguments)."""

    def __init__(self, node: _Node, span: _Span | None):
        self.node, self.span, self.state = node, span, "start"  # start | open | item | after | need

    def feed(self, b, st):
        s = self.state
        if s == "start" and b == 0x5B:
            self.state = "open"
        elif s in ("open", "after") and b == 0x5D:
            _done(st)
        elif s in ("open", "need") and b == 0x28:
            self.state = "item"
            st.append(_Tuple(self.node.item, self.span))
        elif s == "after" and b == 0x2C:
            self.state = "need"
        else:
            raise AssertionError(f"shadow parser: byte {b!r} in tuple list state {s}")
        return True

    def child_done(self, st, key=None):
        self.state = "after"

    def tail(self):
        if self.state == "start":
            return b"[]"
        if self.state == "need":
            return _tuple_min(self.node.item, self.span) + b"]"
        return b"]"


def _copy_stack(st: list) -> list:
    """Shallow copies of the frames (a simulated step must not touch the row's own stack);
    ~10x cheaper than ``copy.copy``, which goes through ``__reduce_ex__`` per frame."""
    out = []
    for f in st:
        g = object.__new__(f.__class__)
        g.__dict__.update(f.__dict__)
        out.append(g)
    return out


def _feed(st: list, data: bytes) -> None:
    for b in data:
        while not st[-1].feed(b, st):
            _done(st)


def _tails(st: list) -> list[bytes]:
    """The shortest completion of the whole stack, one part per frame, top frame first."""
    out, i = [], len(st) - 1
    while i >= 0:
        f = st[i]
        if isinstance(f, _Str) and f.key:  # an open key: its object picks the property
            out.append(st[i - 1].key_tail(f))
            i -= 2
            continue
        out.append(f.tail())
        i -= 1
    return out


# ------------------------------------------------------------------------------ vocabulary
class Vocab:
    """A tokenizer's bytes per token, a byte trie of them and llguidance's tokenizer; built once
    per engine. ``compile(spec)`` (cached) gives the ``Compiled`` constraint rows start from."""

    def __init__(self, hf_tokenizer):
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.size = len(hf_tokenizer)
        self.eos = hf_tokenizer.eos_token_id
        self.lltok = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=self.size)
        special = set(hf_tokenizer.all_special_ids)
        self.bytes: list[bytes] = [b"" if i in special else self.lltok.decode_bytes([i]) for i in range(self.size)]
        # trie node: [children {byte: node}, token ids ending here or None, subtree ids cache]
        self.trie: list = [{}, None, None]
        for i, bs in enumerate(self.bytes):
            if not bs:
                continue
            node = self.trie
            for b in bs:
                node = node[0].setdefault(b, [{}, None, None])
            node[1] = (node[1] or []) + [i]
        self._compiled: OrderedDict[str, Compiled] = OrderedDict()
        self._part_tokens: dict[bytes, list[int]] = {}
        self._banned: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def subtree(self, node) -> list[int]:
        if node[2] is None:
            ids = list(node[1] or [])
            for child in node[0].values():
                ids.extend(self.subtree(child))
            node[2] = ids
        return node[2]

    def banned(self, bits, device) -> Any:
        """The forbidden tokens of an llguidance bitmask (int32 words, bit set = allowed) as a
        bool tensor on ``device``, or None when nothing is allowed. Memoised by the mask's bytes:
        a row inside a string, or between items, asks for the same few masks step after step,
        and unpacking one costs ~10x a dictionary hit."""
        key = (bits.tobytes(), device)
        hit = self._banned.get(key)
        if hit is None:
            import numpy as np
            import torch

            if not bits.any():
                hit = False
            else:
                flat = np.unpackbits((~bits).view(np.uint8), bitorder="little")[: self.size]
                hit = torch.from_numpy(flat.astype(np.bool_)).to(device)
            if len(self._banned) >= 256:  # a plain dict, cleared when full: safe across threads
                self._banned.clear()
            self._banned[key] = hit
        return None if hit is False else hit

    def tokenize_parts(self, parts: list[bytes]) -> list[int]:
        """The closing tokens: each part tokenised on its own (memoised: frames' tails repeat)."""
        out: list[int] = []
        memo = self._part_tokens
        for p in parts:
            toks = memo.get(p)
            if toks is None:
                toks = memo[p] = self.tokenize(p)
                if len(memo) > 65536:
                    memo.clear()
            out.extend(toks)
        return out

    def tokenize(self, data: bytes) -> list[int]:
        """Greedy longest-match tokens for ``data`` (any bytes; byte-fallback tokens fill gaps)."""
        out, i = [], 0
        while i < len(data):
            node, best, j = self.trie, None, i
            while j < len(data):
                node = node[0].get(data[j])
                if node is None:
                    break
                j += 1
                if node[1]:
                    best = (j, node[1][0])
            if best is None:
                raise ConstraintError(f"the tokenizer has no token for byte {data[i]:#x}: cannot close the answer")
            i = best[0]
            out.append(best[1])
        return out

    def compile(self, spec: ConstraintSpec) -> Compiled:
        key = spec.key()
        with self._lock:
            hit = self._compiled.get(key)
            if hit is not None:
                self._compiled.move_to_end(key)
                return hit
        compiled = Compiled(self, spec)
        with self._lock:
            self._compiled[key] = compiled
            if len(self._compiled) > 512:
                self._compiled.popitem(last=False)
        return compiled


class Compiled:
    """A spec compiled against one vocabulary: the llguidance grammar and the shape tree."""

    def __init__(self, vocab: Vocab, spec: ConstraintSpec):
        if spec.kind not in KINDS:
            raise ConstraintError(f"constraint kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
        self.vocab, self.spec = vocab, spec
        llg = vocab.llg
        if spec.kind == "tuple":
            if spec.shape is None:
                raise ConstraintError("a tuple constraint needs its shape")
            self.node = _tuple_node(spec.shape)
            self.grammar = llg.LLMatcher.grammar_from_lark(_lark(spec.shape))
            self.self_ending = False
        else:
            schema = spec.schema if spec.kind == "json_schema" else {"type": "object"}
            if spec.kind == "json_schema" and not isinstance(schema, dict):
                raise ConstraintError("json_schema: the schema must be a JSON object")
            defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
            self.node = _schema_node(schema, defs, "schema")
            if spec.kind == "json_object" and self.node.kind != "obj":
                raise AssertionError
            self.grammar = llg.LLMatcher.grammar_from_json_schema(_grammar_schema(schema), defaults=JSON_OPTIONS)
            self.self_ending = True
        probe = llg.LLMatcher(vocab.lltok, self.grammar)
        if probe.is_error():
            raise ConstraintError(f"the grammar engine refused the constraint: {probe.get_error()}")
        self.proto = probe  # rows start from copies of it: a copy costs ~1/50 of parsing the grammar again
        self.span = _Span(spec.span_text, vocab) if spec.span_text else None
        self.min_tokens = len(vocab.tokenize_parts(_tails(RowConstraint(self, 1 << 30).stack)))

    def start(self, max_new_tokens: int) -> RowConstraint:
        return RowConstraint(self, max_new_tokens)


class RowConstraint:
    """One row's grammar matcher, shadow parser and budget (see the module's docstring)."""

    def __init__(self, compiled: Compiled, max_new_tokens: int):
        self.c = compiled
        self.matcher = compiled.proto.deep_copy()
        self.stack: list[_Frame] = [_Root(compiled.node, compiled.span)]
        self.left = max_new_tokens  # tokens this row may still take
        self.queue: list[int] | None = None  # closing mode: the tokens still to force
        self.closed_by_budget = False
        self.complete = False
        self._bitmask = None
        self._bitmask_ptr = 0
        self._settled: tuple[int, list] | None = None  # the token settle() passed, and its stack

    def closing(self) -> bytes:
        """The shortest bytes that complete the answer from here."""
        return b"".join(_tails(self.stack))

    # -- the decoder's side
    def forced(self) -> int | None:
        """The token this row must take now (closing mode), else None."""
        if self.queue is None:
            return None
        return self.queue[0] if self.queue else self.c.vocab.eos

    def mask_(self, scores) -> None:
        """Forbidden tokens' logits to -inf, in place on a (1, vocab) or (vocab,) tensor."""
        import numpy as np

        v = self.c.vocab
        if self._bitmask is None:
            self._bitmask = np.zeros((v.size + 31) // 32, dtype=np.int32)
            self._bitmask_ptr = self._bitmask.ctypes.data  # .ctypes builds an object per call
        bits = self._bitmask
        self.matcher.unsafe_compute_mask_ptr(self._bitmask_ptr, bits.nbytes)
        row = scores.view(-1)
        if row.shape[0] > v.size:
            row[v.size :] = float("-inf")
        span = self._span_mask()
        banned = v.banned(bits, row.device)
        if banned is None:  # nothing allowed (should not happen): close now
            self._close()
            row.fill_(float("-inf"))
            row[self.forced()] = 0.0
            return
        if span is not None:
            banned = banned | ~span.to(row.device)
            if bool(banned.all()):  # the grammar and the text leave nothing (should not happen)
                self._close()
                row.fill_(float("-inf"))
                row[self.forced()] = 0.0
                return
        row[: v.size].masked_fill_(banned, float("-inf"))

    def _span_mask(self):
        span = self.c.span
        if span is None:
            return None
        top = self.stack[-1]
        if isinstance(top, _Str) and top.span is not None and not top.esc:
            return span.allowed(top.buf, b'"', b'"\\' + bytes(range(0x20)))
        if isinstance(top, _Bare) and top.span is not None:
            return span.allowed(top.buf, _TUPLE_SYNTAX, _TUPLE_SYNTAX)
        return None  # a mention opened inside the next token is checked by settle()

    def settle(self, token: int) -> int:
        """The token to take: ``token``; or, when it would take a mention out of the text, the
        first token of its own valid part; or, when taking it would leave too little budget to
        close the answer, the first closing token."""
        if self.queue is not None:
            return self.forced()
        v = self.c.vocab
        if token == v.eos:
            return token
        data = v.bytes[token]
        st = _copy_stack(self.stack)
        try:
            _feed(st, data)
        except SpanViolation:
            st = _copy_stack(self.stack)
            k = 0
            try:
                for k, b in enumerate(data):  # noqa: B007 - k is where the mention left the text
                    _feed(st, bytes([b]))
            except SpanViolation:
                pass
            if k == 0:
                self._close()
                return self.forced()
            token = v.tokenize(data[:k])[0]
            st = _copy_stack(self.stack)
            _feed(st, v.bytes[token])
        parts = _tails(st)
        if sum(map(len, parts)) <= self.left - 1 or len(v.tokenize_parts(parts)) <= self.left - 1:  # tokens <= bytes
            self._settled = (token, st)  # advance(token) takes this stack instead of feeding again
            return token
        self._close()
        return self.forced()

    def _close(self) -> None:
        self.queue = self.c.vocab.tokenize_parts(_tails(self.stack))
        self.closed_by_budget = True

    def advance(self, token: int) -> bool:
        """Take ``token`` (picked or forced); True when the answer is complete."""
        self.left -= 1
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"constrained decoding: token {token} refused ({self.matcher.get_error()})")
        settled, self._settled = self._settled, None
        if token != self.c.vocab.eos:
            if self.queue:
                self.queue.pop(0)
            if settled is not None and settled[0] == token:
                self.stack = settled[1]  # settle() fed this token to copies of these frames
            else:
                _feed(self.stack, self.c.vocab.bytes[token])
        self.complete = self.matcher.is_stopped()
        return self.complete

    @property
    def finish(self) -> str:
        """A complete answer ends "stop"; one the budget closed early ends "length"."""
        return "length" if self.closed_by_budget else "stop"
