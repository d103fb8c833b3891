"""Which grammar engine serves the continuous batcher best on CPU: xgrammar, llguidance or
outlines-core, measured side by side in one process (issue 17, item 4).

    .venv/bin/python benchmarks/grammar_engines.py --tokenizer artifacts/demo/tiny \\
        --tokenizer /path/to/a/llama-2/tokenizer.json [--site DIR] [--out BENCHMARKS.md]

For each tokenizer (a model directory or a ``tokenizer.json``) and each engine that imports:

- **setup**: wrapping the tokenizer's vocabulary (once per served model);
- **compile**: a OneKE NER answer schema of 6 labels (every label a required key, in order, a list
  of strings; ``", "`` / ``": "`` separators, no free whitespace), the first compile, and the mean
  over 12 more schemas with other label sets (each prompt's label batch is a new schema: this is
  the per-request cost the batcher pays where a cache does not hit);
- **mask**: per-token time to compute the next-token mask while walking the tokens the tokenizer
  itself gives for a valid answer with Chinese mentions (so byte-fallback tokens), mean / p99 /
  max, and the same with 16 rows interleaved as the batcher does;
- **works**: every token of that answer was allowed and the walk ends accepting; a lone
  byte-fallback token (first byte of a 3-byte character) is allowed inside a string; a
  grammar (the tuple answer form) can be given as well as a JSON schema.

``--site DIR`` puts a directory of the engines (``pip install --target DIR ...``) on the path,
so they can be measured without installing the losers into the project's environment.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

LABELS = ["人物", "地理位置", "组织机构", "时间", "作品", "职业"]
OTHER_LABELS = ["事件", "奖项", "国家", "城市", "学校", "公司", "产品", "疾病", "药物", "职位", "朝代", "民族", "语言"]
ANSWER = {
    "人物": ["鲁迅", "周树人"],
    "地理位置": ["绍兴"],
    "组织机构": [],
    "时间": ["1881年"],
    "作品": ["狂人日记", "阿Q正传"],
    "职业": ["作家"],
}
TUPLE_REGEX = r"(无|\([^(),\[\]\n]+,(人物|地理位置|组织机构|时间|作品|职业)\)(\n\([^(),\[\]\n]+,(人物|地理位置|组织机构|时间|作品|职业)\))*)"


def ner_schema(labels: list[str]) -> dict:
    return {
        "type": "object",
        "properties": {lab: {"type": "array", "items": {"type": "string"}} for lab in labels},
        "required": list(labels),
        "additionalProperties": False,
    }


def load_tokenizer(path: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    if p.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(p), unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    else:
        tok = AutoTokenizer.from_pretrained(p)
    return tok


def token_bytes(tok) -> list[bytes]:
    """Each token id's bytes as the decoder produces them (sentencepiece: ``▁`` = space,
    ``<0xNN>`` = one byte); special tokens are empty."""
    out: list[bytes] = []
    special = set(tok.all_special_ids)
    for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if i in special or piece is None:
            out.append(b"")
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return out


def answer_ids(tok, text: str) -> list[int]:
    """The tokens of ``text`` as they follow a newline in a generation (no sentencepiece
    prefix space)."""
    pre = tok("\n", add_special_tokens=False)["input_ids"]
    ids = tok("\n" + text, add_special_tokens=False)["input_ids"]
    assert ids[: len(pre)] == pre, "the newline merged with the answer"
    return ids[len(pre) :]


# ------------------------------------------------------------------------- engines
class XGrammar:
    name = "xgrammar"

    def __init__(self, tok):
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
        self.vocab = len(tok)

    def compile(self, schema: dict):
        compiler = self.xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))

    def compile_regex(self, regex: str):
        return self.xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False).compile_regex(regex)

    def matcher(self, compiled):
        import torch

        m = self.xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        m._mask = self.xgr.allocate_token_bitmask(1, self.vocab)
        m._torch = torch
        return m

    def mask(self, m):
        m.fill_next_token_bitmask(m._mask)
        return m._mask

    def allowed(self, m, t: int) -> bool:
        return bool((int(m._mask[0, t // 32]) >> (t % 32)) & 1)

    def consume(self, m, t: int) -> bool:
        return m.accept_token(t)

    def accepting(self, m) -> bool:
        return m.is_terminated()


class LLGuidance:
    name = "llguidance"

    def __init__(self, tok):
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tok, n_vocab=len(tok))
        self.vocab = len(tok)

    def compile(self, schema: dict):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        )
        m = self.llg.LLMatcher(self.tok, grammar)  # compiles (lexer built lazily)
        assert not m.is_error(), m.get_error()
        return grammar

    def compile_regex(self, regex: str):
        grammar = self.llg.LLMatcher.grammar_from_regex(regex)
        assert not self.llg.LLMatcher(self.tok, grammar).is_error()
        return grammar

    def matcher(self, grammar):
        import llguidance.torch as lt

        m = self.llg.LLMatcher(self.tok, grammar)
        m_mask = lt.allocate_token_bitmask(1, self.vocab)
        return [m, m_mask]

    def mask(self, mm):
        import llguidance.torch as lt

        lt.fill_next_token_bitmask(mm[0], mm[1], 0)
        return mm[1]

    def allowed(self, mm, t: int) -> bool:
        return bool((int(mm[1][0, t // 32]) >> (t % 32)) & 1)

    def consume(self, mm, t: int) -> bool:
        return mm[0].consume_token(t)

    def accepting(self, mm) -> bool:
        return mm[0].is_accepting()


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tok):
        import outlines_core as oc

        self.oc = oc
        mapping: dict[bytes, list[int]] = {}
        for i, b in enumerate(token_bytes(tok)):
            if b and i != tok.eos_token_id:
                mapping.setdefault(b, []).append(i)
        self.vocabulary = oc.Vocabulary(tok.eos_token_id, mapping)
        self.vocab = len(tok)

    def compile(self, schema: dict):
        from outlines_core.json_schema import build_regex_from_schema

        # No separator option: its default allows one optional space around each separator
        # (a superset of ", " / ": "), the closest to the other two's fixed separators.
        regex = build_regex_from_schema(json.dumps(schema))
        return self.oc.Index(regex, self.vocabulary)

    def compile_regex(self, regex: str):
        return self.oc.Index(regex, self.vocabulary)

    def matcher(self, index):
        from outlines_core.kernels.torch import allocate_token_bitmask

        g = self.oc.Guide(index)
        return [g, allocate_token_bitmask(self.vocab)]

    def mask(self, gm):
        v = gm[1]
        gm[0].write_mask_into(v.data_ptr(), v.numel(), v.element_size())
        return v

    def allowed(self, gm, t: int) -> bool:
        return bool((int(gm[1][0, t // 32]) >> (t % 32)) & 1)

    def consume(self, gm, t: int) -> bool:
        gm[0].advance(t)
        return True

    def accepting(self, gm) -> bool:
        return gm[0].is_finished()


ENGINES = (XGrammar, LLGuidance, OutlinesCore)


def _ms(xs):
    return round(1000 * statistics.mean(xs), 3)


def measure(engine_cls, tok) -> dict:
    res: dict = {"engine": engine_cls.name}
    t0 = time.perf_counter()
    eng = engine_cls(tok)
    res["setup_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    t0 = time.perf_counter()
    compiled = eng.compile(ner_schema(LABELS))
    res["compile_first_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    times = []
    for k in range(12):
        labels = [OTHER_LABELS[(k + j) % len(OTHER_LABELS)] for j in range(6)]
        t0 = time.perf_counter()
        eng.compile(ner_schema(labels))
        times.append(time.perf_counter() - t0)
    res["compile_mean_ms"] = _ms(times)

    ids = answer_ids(tok, json.dumps(ANSWER, ensure_ascii=False))
    bytes_of = token_bytes(tok)
    res["answer_tokens"] = len(ids)
    res["byte_fallback_tokens"] = sum(1 for t in ids if len(bytes_of[t]) == 1 and bytes_of[t][0] >= 0x80)

    def walk(rows: int) -> tuple[list[float], bool]:
        matchers = [eng.matcher(compiled) for _ in range(rows)]
        per_token, ok = [], True
        for t in ids:
            for m in matchers:  # one decode step: every row's mask, then every row's token
                t0 = time.perf_counter()
                eng.mask(m)
                per_token.append(time.perf_counter() - t0)
                ok &= eng.allowed(m, t)
            for m in matchers:
                ok &= bool(eng.consume(m, t))
        return per_token, ok and all(eng.accepting(m) for m in matchers)

    walk(1)  # warm-up
    one, ok = walk(1)
    res["mask_mean_ms"] = _ms(one)
    res["mask_p99_ms"] = round(1000 * sorted(one)[int(0.99 * (len(one) - 1))], 3)
    res["mask_max_ms"] = round(1000 * max(one), 3)
    sixteen, ok16 = walk(16)
    res["mask_16rows_step_ms"] = round(1000 * sum(sixteen) / len(ids), 3)
    res["answer_accepted"] = ok and ok16

    # a lone first byte of a 3-byte character inside a string
    lead = next((i for i, b in enumerate(bytes_of) if b == b"\xe9"), None)
    m = eng.matcher(compiled)
    prefix = answer_ids(tok, '{"人物": ["')
    for t in prefix:
        eng.consume(m, t)
    eng.mask(m)
    res["byte_token_allowed_in_string"] = lead is not None and eng.allowed(m, lead)
    try:
        t0 = time.perf_counter()
        eng.compile_regex(TUPLE_REGEX)
        res["tuple_regex_compile_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    except Exception as exc:  # noqa: BLE001 - report, do not fail the table
        res["tuple_regex_compile_ms"] = f"failed: {type(exc).__name__}"
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", action="append", required=True, help="model dir or tokenizer.json (repeatable)")
    ap.add_argument("--site", help="a directory holding the engines (pip install --target)")
    ap.add_argument("--out", help="append the markdown table to this file")
    args = ap.parse_args(argv)
    if args.site:
        sys.path.insert(0, args.site)
    import torch

    torch.set_num_threads(1)
    rows = []
    for path in args.tokenizer:
        tok = load_tokenizer(path)
        for cls in ENGINES:
            try:
                res = measure(cls, tok)
            except ImportError as exc:
                res = {"engine": cls.name, "error": f"not installed ({exc})"}
            res["tokenizer"] = f"{Path(path).name} ({len(tok)} tokens)"
            rows.append(res)
            print(json.dumps(res, ensure_ascii=False), flush=True)
    cols = [
        "tokenizer",
        "engine",
        "setup_ms",
        "compile_first_ms",
        "compile_mean_ms",
        "mask_mean_ms",
        "mask_p99_ms",
        "mask_max_ms",
        "mask_16rows_step_ms",
        "answer_tokens",
        "byte_fallback_tokens",
        "answer_accepted",
        "byte_token_allowed_in_string",
        "tuple_regex_compile_ms",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, r.get("error", ""))) for c in cols) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(f"\n<!-- {platform.processor() or platform.machine()}, torch threads 1 -->\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
