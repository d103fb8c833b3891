"""The per-record selectors: plain functions of one record's view, no Ray.

Each returns the value that drops the record (a number or a short string, written to
``dropped.jsonl``), or None to keep it. ``pii`` in mask mode keeps the record and returns its
masked form instead. The chain-wide selectors (exact and ROUGE-L dedup, perplexity) are in
``dedup.py`` and ``perplexity.py``.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from typing import Any

from knowlm_ray.corpus.pii import describe, mask_pii
from knowlm_ray.corpus.text import words
from knowlm_ray.curate.cirs import cirs
from knowlm_ray.curate.config import CIRSSelector, LanguageSelector, LengthSelector, MTLDSelector, PIISelector
from knowlm_ray.curate.records import map_strings

# py3langid's model ranks plain written Mandarin as Wu ("wuu") first by a hair (measured: 请列出三个
# 中国城市。 -> wuu -120.6, zh -120.9); written Wu, Cantonese and Mandarin share the Han script and
# most of the vocabulary, so all three count as zh.
LANG_ALIASES = {"wuu": "zh", "yue": "zh"}


def joined(view: dict[str, str], fields: list[str]) -> str:
    return "\n".join(view[f] for f in fields if view[f])


def normalised(view: dict[str, str], fields: list[str]) -> str:
    """NFKC, case-folded, whitespace-collapsed text of the fields (the exact-dedup key's text)."""
    parts = [" ".join(unicodedata.normalize("NFKC", view[f]).casefold().split()) for f in fields]
    return "\x1f".join(parts)


def length(view: dict[str, str], cfg: LengthSelector) -> int | None:
    n = len(view[cfg.field])
    return n if n < cfg.min_chars or n > cfg.max_chars else None


def _mtld_pass(ws: list[str], threshold: float) -> float:
    """One direction of MTLD: the text's length over its number of factors (stretches whose
    type-token ratio falls to ``threshold``), the last stretch counting as a partial factor."""
    terms: set[str] = set()
    count, factors, ttr = 0, 0.0, 1.0
    for w in ws:
        count += 1
        terms.add(w)
        ttr = len(terms) / count
        if ttr <= threshold:
            terms, count = set(), 0
            factors += 1
    if count > 0:
        factors += (1 - ttr) / (1 - threshold)
    if factors == 0:  # the text's TTR never left 1 (every word new): one factor
        whole = len(set(ws)) / len(ws)
        factors = 1.0 if whole == 1 else (1 - whole) / (1 - threshold)
    return len(ws) / factors


def mtld_value(text: str, ttr_threshold: float = 0.72) -> float:
    """McCarthy & Jarvis's (2010) MTLD: the mean of the forward and the backward pass, over
    script-aware words (one per CJK character, case-folded); 0 for a text without words. The
    same numbers as ``lexicalrichness`` (tested), without its import of textblob and nltk, which
    costs every Ray worker seconds."""
    ws = [w.casefold() for w in words(text)]
    if not ws:
        return 0.0
    return (_mtld_pass(ws, ttr_threshold) + _mtld_pass(ws[::-1], ttr_threshold)) / 2


def mtld(view: dict[str, str], cfg: MTLDSelector) -> float | None:
    v = round(mtld_value(view[cfg.field], cfg.ttr_threshold), 3)
    return v if v < cfg.min or v > cfg.max else None


def code_complexity(view: dict[str, str], cfg: CIRSSelector) -> float | str | None:
    score, blocks = cirs(view[cfg.field])
    if not blocks:
        return "no code" if cfg.require_code else None
    score = round(score, 3)
    return score if score < cfg.min or score > cfg.max else None


@functools.lru_cache(maxsize=1)
def _identifier():
    import py3langid.langid as langid

    langid.classify("")  # builds the module's identifier from the model inside the wheel
    return langid.IDENTIFIER


def detect_language(text: str) -> str:
    lang, _ = _identifier().classify(text)
    return LANG_ALIASES.get(lang, lang)


def language(view: dict[str, str], cfg: LanguageSelector) -> str | None:
    text = joined(view, cfg.fields)
    if not text.strip():
        return "empty"
    lang = detect_language(text)
    return None if lang in cfg.langs else lang


def pii(record: Any, cfg: PIISelector) -> tuple[str | None, Any, str]:
    """``(drop value, masked record or None, what was found)``."""
    found: dict[str, int] = {}

    def mask(s: str) -> str:
        out, counts = mask_pii(s)
        for k, v in counts.items():
            found[k] = found.get(k, 0) + v
        return out

    masked = map_strings(record, mask)
    if not found:
        return None, None, ""
    what = describe(found)  # type: ignore[arg-type]
    if cfg.action == "drop":
        return what, None, what
    return None, masked, what


def dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
