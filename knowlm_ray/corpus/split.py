"""Sentence split, tokenisation and greedy building of samples of at most ``max_tokens`` tokens.

This is KnowLM's ``pretrain/preprocess.py`` rule set, with three deliberate differences:

* **Sentences.** Chinese ends at 。！？；!?; or a newline (closing quotes/brackets after the stop
  stay with the sentence; decimals like 3.5 never split, "." is not a Chinese stop); English at
  . ! ? or an ellipsis followed by whitespace and a capital or an opening quote, and at every line
  break. A "." after a title-like abbreviation (Mr. Dr. Prof. St. Mt. Gen. e.g. i.e. vs.) or an
  initial (J. K.) never ends a sentence; after Inc. Ltd. Co. etc. it does when a capital follows;
  after a dotted one (U.S. a.m. Ph.D.) only when a typical sentence opener follows ("in the U.S.
  She ..." vs "the U.S. Department"). Decimals (3.14) never split: no whitespace follows the
  dot. Code splits at line boundaries. Sentences *partition* the text: whitespace after a stop
  stays with the sentence it follows, so ``"".join(split_sentences(t, lang)) == t``.
* **Tokens.** With a fast (tokenizers-backed) tokenizer the whole document is encoded once and
  the tokens are cut at the sentence boundaries by their character offsets. Encoding each
  sentence on its own (KnowLM) makes sentencepiece add a "▁" word-start to every sentence, so the
  decoded samples grow spaces the text never had ("你好。 世界。"). Here the concatenated samples
  of a document are exactly the document's own encoding. A slow tokenizer falls back to
  per-sentence encoding.
* **Short tails** (``split.tail``). The last sample of a document that needed several samples
  is its *tail*; it is *short* under ``split.short_tail`` x ``max_tokens`` tokens. Greedy forward
  merging leaves it as short as the leftover sentences make it. Options:

  - ``keep`` (default): the tail stays as it is. Samples are disjoint (no token is trained on
    twice), and a short tail is cheap: ``pack.mode: greedy`` packs it with its neighbours at no
    padding cost, and with ``pack.mode: none`` it only costs padding in its micro-batch.
  - ``backfill`` (KnowLM): a short tail is topped up with the preceding whole sentences (walking
    backwards, while they fit in ``max_tokens``), so it carries context; those sentences are
    trained on twice (measured as ``stats.backfill_tokens``). Unpacked rows fill up; the cost is
    the repeated tokens.
  - ``drop``: a short tail is dropped and counted (``short_dropped``): no repetition and no short
    rows, at the cost of losing its text.

  ``merge`` (append a short tail to the previous sample) is no option: greedy merging already
  put into the previous sample everything that fits, so it could only make a sample longer than
  ``max_tokens``. Why ``keep`` is the default: KnowLM back-filled because its loader padded every
  sample on its own; our packed rows leave no padding to save, and duplicated sentences would
  bias training towards document ends. The benchmark (``benchmarks/corpus.py``) measures each
  option: tail samples, short tails, repeated tokens and fill. Any sample shorter than
  ``min_tokens`` is dropped and counted (KnowLM drops chunks of <= 20 tokens the same way).
  The manifest measures the choice: ``stats.tail_samples`` / ``tail_tokens``,
  ``short_tail_samples`` (tails still short after the option), ``backfill_tokens``. On
  data/sample with ``max_tokens: 256`` and ``keep``: 158 tails of 436 samples, 52 of them short.

BOS goes on a document's first sample only and EOS on its last only (KnowLM's rule); both count
towards ``max_tokens``. A single sentence longer than ``max_tokens`` is cut into
``max_tokens``-token pieces (counted as ``sentences_cut``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- sentences
_ZH_CLOSERS = "”’」』）》】)\"'"
_ZH_END = re.compile(r"[。！？；!?;]+[" + re.escape(_ZH_CLOSERS) + r"]*\s*|\n\s*")

# A stop, optional closing quotes/brackets, whitespace, then a capital or an opening quote.
_EN_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]*[A-Z])|\n\s*")
# Abbreviations that precede a name (or anything, e.g. / i.e.): a '.' after them never ends a
# sentence. Those that precede numbers (No. 5, Fig. 3, approx. 40, Jan. 5) need no entry: only
# a capital or a quote after the stop can end a sentence.
_EN_TITLES = frozenset(
    """
mr mrs ms mx dr prof st mt ft gen col capt lt sgt cpl rev hon gov sen rep pres dept univ vs cf eg ie
""".split()
)
# Abbreviations that often end a sentence: followed by a capitalised word, the sentence ends
# ("... Meridian Robotics Inc. She was born ...", while "Inc. of Boston" goes on).
_EN_ENDERS = frozenset("inc ltd co corp llc plc bros etc al jr sr esq".split())
# After dotted abbreviations (U.S., a.m., Ph.D.) only a typical sentence opener ends the sentence:
# "in the U.S. She moved" splits, "the U.S. Department of Defense" does not.
_EN_OPENERS = frozenset(
    """
a an the he she it they we i you this that these those there his her its their our my your
in on at after before during since when while as but however although though for from if
many most some one two three all both each every none such then thus yet so also today
""".split()
)
_LAST_WORD = re.compile(r"(\S+)$")
_NEXT_WORD = re.compile(r"[\"'“‘(\[]*([A-Za-z]+)")
_DOTTED = re.compile(r"^(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}$")  # U.S, e.g, i.e, a.m, Ph.D (before the last '.')


def _abbreviation_kind(text: str, stop_at: int) -> str | None:
    """The word ending at the single '.' at ``stop_at``: "title", "ender", "dotted", "initial",
    or None for an ordinary word."""
    m = _LAST_WORD.search(text[max(0, stop_at - 32) : stop_at])  # a window keeps this O(1)
    if not m:
        return None
    word = m.group(1).lstrip("\"'“‘([")
    key = word.lower().replace(".", "")
    if key in _EN_TITLES:
        return "title"
    if key in _EN_ENDERS:
        return "ender"
    if _DOTTED.match(word):
        return "dotted"
    if len(word) == 1 and word.isupper():  # "J. K. Rowling"
        return "initial"
    return None


def _en_boundary(text: str, m: re.Match) -> bool:
    """Does the ``_EN_END`` match ``m`` end a sentence?"""
    stop = m.group(0)
    if stop[0] != "." or stop.startswith(".."):  # ! ? an ellipsis, or a bare line break
        return True
    if "\n" in stop:  # a line break after a stop always ends the sentence ("the U.S.\n\nHe")
        return True
    kind = _abbreviation_kind(text, m.start())
    if kind in (None, "ender"):  # the lookahead has seen a capital (or an opening quote)
        return True
    if kind in ("title", "initial"):
        return False
    nxt = _NEXT_WORD.match(text, m.end())  # dotted: only before a typical sentence opener
    return bool(nxt) and nxt.group(1).lower() in _EN_OPENERS


def _cut(text: str, ends: Sequence[int]) -> list[str]:
    out, start = [], 0
    for end in ends:
        if end > start:
            out.append(text[start:end])
            start = end
    if start < len(text):
        out.append(text[start:])
    return out


def split_sentences(text: str, lang: str) -> list[str]:
    """Split ``text`` into sentences; their concatenation is exactly ``text``."""
    if lang == "code":
        return text.splitlines(keepends=True)
    if lang == "zh":
        return _cut(text, [m.end() for m in _ZH_END.finditer(text)])
    return _cut(text, [m.end() for m in _EN_END.finditer(text) if _en_boundary(text, m)])


# --------------------------------------------------------------------------- tokens
def encode_sentences(tokenizer: Any, sentences: Sequence[str]) -> list[list[int]]:
    """Token ids per sentence, without special tokens; concatenated they encode the whole text.
    Special-token strings in the text ("<s>", "</s>") are encoded as plain text."""
    return encode_documents(tokenizer, [sentences])[0]


def encode_documents(tokenizer: Any, documents: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """``encode_sentences`` for many documents with one tokenizer call (the batch path of the
    tokenising stage: one call per batch instead of one per document)."""
    out: list[list[list[int]]] = [[] for _ in documents]
    todo = [k for k, sents in enumerate(documents) if sents]
    if not todo:
        return out
    if not getattr(tokenizer, "is_fast", False):
        for k in todo:
            # split_special_tokens: a literal "<s>" in the text (code, HTML) is text, not BOS
            enc = tokenizer(list(documents[k]), add_special_tokens=False, split_special_tokens=True)
            out[k] = [list(ids) for ids in enc["input_ids"]]
        return out
    for k, enc in zip(todo, _encode_fast(tokenizer, ["".join(documents[k]) for k in todo])):
        out[k] = _cut_tokens(enc.ids, enc.offsets, documents[k])
    return out


def _encode_fast(tokenizer: Any, texts: list[str]) -> list:
    """The tokenizers backend's batch encode (what ``tokenizer(texts, add_special_tokens=False,
    split_special_tokens=True)`` runs, without building a BatchEncoding of Python lists)."""
    backend = tokenizer.backend_tokenizer
    before = backend.encode_special_tokens
    backend.encode_special_tokens = True  # split_special_tokens
    try:
        return backend.encode_batch(texts, add_special_tokens=False)
    finally:
        backend.encode_special_tokens = before


def _cut_tokens(ids: list[int], offsets: list[tuple[int, int]], sentences: Sequence[str]) -> list[list[int]]:
    """Cut one document's tokens at its sentence boundaries by their character offsets.

    A token belongs to the sentence holding its last character: "▁World" (space + word) goes
    with "World", a trailing "\n" with the line it ends. Never move backwards, so token order
    is kept even if offsets overlap (sentencepiece's leading "▁")."""
    n = len(sentences)
    if not ids:
        return [[] for _ in range(n)]
    ends = np.cumsum([len(s) for s in sentences])
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    last = np.maximum(np.maximum(offs[:, 1] - 1, offs[:, 0]), 0)
    owner = np.minimum(np.maximum.accumulate(np.searchsorted(ends, last, side="right")), n - 1)
    cuts = np.searchsorted(owner, np.arange(1, n))  # owner never decreases
    arr = np.asarray(ids, dtype=np.int64)
    return [piece.tolist() for piece in np.split(arr, cuts)]


TAIL_MODES = ("keep", "backfill", "drop")


def short_tail_tokens(max_tokens: int, fraction: float) -> int:
    """Tails under this many tokens are short (``split.short_tail`` x ``max_tokens``, at least 1)."""
    return max(1, int(max_tokens * fraction))


@dataclass
class DocSamples:
    samples: list[list[int]] = field(default_factory=list)  # in document order
    sentences_cut: int = 0
    backfill_tokens: int = 0  # tokens the tail repeats from earlier samples (tail: backfill)
    dropped_tail: list[int] | None = None  # the short tail taken out (tail: drop)


def build_samples(
    sentence_ids: Sequence[Sequence[int]],
    max_tokens: int,
    bos_id: int | None = None,
    eos_id: int | None = None,
    tail: str = "keep",
    short_tail: int = 0,
) -> DocSamples:
    """Greedy forward merge of whole sentences into samples of <= max_tokens tokens.

    BOS is glued to the first sentence and EOS to the last, so they land on the document's first
    and last sample and count towards the limit. With ``tail: keep`` concatenating the samples
    gives back ``[BOS] + sum(sentence_ids) + [EOS]``; ``backfill`` / ``drop`` change a tail
    shorter than ``short_tail`` tokens (see the module doc). Dropping samples under
    ``min_tokens`` is the caller's.
    """
    if tail not in TAIL_MODES:
        raise ValueError(f"tail must be one of {TAIL_MODES}, got {tail!r}")
    units = [list(ids) for ids in sentence_ids if len(ids)]
    if not units:
        return DocSamples()
    if bos_id is not None:
        units[0].insert(0, bos_id)
    if eos_id is not None:
        units[-1].append(eos_id)
    result = DocSamples()
    samples: list[list[list[int]]] = []  # each sample as its units (sentences or cut pieces)
    current: list[list[int]] = []
    size = 0
    for unit in units:
        if len(unit) > max_tokens:  # an over-long sentence: cut into max_tokens pieces
            result.sentences_cut += 1
            if current:
                samples.append(current)
            pieces = [unit[i : i + max_tokens] for i in range(0, len(unit), max_tokens)]
            samples.extend([p] for p in pieces[:-1])
            current, size = [pieces[-1]], len(pieces[-1])
        elif size + len(unit) > max_tokens:
            samples.append(current)
            current, size = [unit], len(unit)
        else:
            current.append(unit)
            size += len(unit)
    if current:
        samples.append(current)
    flat = [[t for u in sample for t in u] for sample in samples]
    if len(flat) > 1 and len(flat[-1]) < short_tail and tail != "keep":
        if tail == "drop":
            result.dropped_tail = flat.pop()
        else:
            earlier = [u for sample in samples[:-1] for u in sample]
            prefix: list[int] = []
            for k in range(len(earlier) - 1, -1, -1):
                unit = earlier[k][1:] if k == 0 and bos_id is not None else earlier[k]  # BOS: first sample only
                if len(prefix) + len(unit) + len(flat[-1]) > max_tokens:
                    break
                prefix[:0] = unit
            flat[-1] = prefix + flat[-1]
            result.backfill_tokens = len(prefix)
    result.samples = flat
    return result
