"""Sentence split, tokenisation and greedy building of samples of at most ``max_tokens`` tokens.

This is KnowLM's ``pretrain/preprocess.py`` rule set, with three deliberate differences:

* **Sentences.** Chinese ends at 。！？；!?; or a newline (closing quotes/brackets after the stop
  stay with the sentence); English at . ! ? followed by whitespace and a capital or an opening
  quote, never after a common abbreviation (Mr. Dr. e.g. i.e. U.S. etc.) or an initial; code at
  line boundaries. Sentences *partition* the text: whitespace after a stop stays with the
  sentence it follows, so ``"".join(split_sentences(t, lang)) == t``.
* **Tokens.** With a fast (tokenizers-backed) tokenizer the whole document is encoded once and
  the tokens are cut at the sentence boundaries by their character offsets. Encoding each
  sentence on its own (KnowLM) makes sentencepiece add a "▁" word-start to every sentence, so the
  decoded samples grow spaces the text never had ("你好。 世界。"). Here the concatenated samples
  of a document are exactly the document's own encoding. A slow tokenizer falls back to
  per-sentence encoding.
* **Short tails.** KnowLM back-fills a document's short last chunk with already-used preceding
  sentences, so its samples overlap (a sentence is trained on twice). We keep samples disjoint:
  sentences are merged greedily forward, the tail is kept as it is, and any sample shorter than
  ``min_tokens`` is dropped and counted (KnowLM drops chunks of <= 20 tokens the same way).

BOS goes on a document's first sample only and EOS on its last only (KnowLM's rule); both count
towards ``max_tokens``. A single sentence longer than ``max_tokens`` is cut into
``max_tokens``-token pieces (counted as ``sentences_cut``).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

# --------------------------------------------------------------------------- sentences
_ZH_CLOSERS = "”’」』）》】)\"'"
_ZH_END = re.compile(r"[。！？；!?;]+[" + re.escape(_ZH_CLOSERS) + r"]*\s*|\n\s*")

# A stop, optional closing quotes/brackets, whitespace, then a capital or an opening quote.
_EN_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]*[A-Z])|\n\s*")
_EN_ABBREV = frozenset("""
mr mrs ms dr prof sr jr st mt vs etc eg ie al fig figs no nos vol vols pp ed eds inc ltd co corp
dept univ gen col capt lt sgt rev hon est approx jan feb mar apr jun jul aug sep sept oct nov dec
""".split())
_LAST_WORD = re.compile(r"(\S+)$")
_DOTTED = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")  # U.S, e.g, i.e, a.m (before the final '.')


def _is_abbreviation(text: str, stop_at: int) -> bool:
    """Is the single '.' at ``stop_at`` the end of an abbreviation or an initial?"""
    m = _LAST_WORD.search(text[max(0, stop_at - 32):stop_at])  # a window keeps this O(1)
    if not m:
        return False
    word = m.group(1).lstrip("\"'“‘([")
    return (word.lower().replace(".", "") in _EN_ABBREV or bool(_DOTTED.match(word))
            or (len(word) == 1 and word.isupper()))  # "J. K. Rowling"


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
    ends = []
    for m in _EN_END.finditer(text):
        if m.group(0)[0] == "." and not m.group(0).startswith("..") and _is_abbreviation(text, m.start()):
            continue
        ends.append(m.end())
    return _cut(text, ends)


# --------------------------------------------------------------------------- tokens
def encode_sentences(tokenizer: Any, sentences: Sequence[str]) -> list[list[int]]:
    """Token ids per sentence, without special tokens; concatenated they encode the whole text."""
    if not sentences:
        return []
    if not getattr(tokenizer, "is_fast", False):
        return [list(ids) for ids in tokenizer(list(sentences), add_special_tokens=False)["input_ids"]]
    text = "".join(sentences)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends, pos = [], 0
    for s in sentences:
        pos += len(s)
        ends.append(pos)
    out: list[list[int]] = [[] for _ in sentences]
    current = 0
    for tok_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        # A token belongs to the sentence holding its last character: "▁World" (space + word)
        # goes with "World", a trailing "\n" with the line it ends. Never move backwards, so
        # token order is kept even if offsets overlap (sentencepiece's leading "▁").
        last = max(end - 1, start, 0)
        current = max(current, bisect.bisect_right(ends, last))
        out[min(current, len(out) - 1)].append(int(tok_id))
    return out


@dataclass
class DocSamples:
    samples: list[list[int]] = field(default_factory=list)  # in document order
    sentences_cut: int = 0


def build_samples(sentence_ids: Sequence[Sequence[int]], max_tokens: int,
                  bos_id: int | None = None, eos_id: int | None = None) -> DocSamples:
    """Greedy forward merge of whole sentences into samples of <= max_tokens tokens.

    BOS is glued to the first sentence and EOS to the last, so they land on the document's first
    and last sample and count towards the limit. Concatenating the samples gives back
    ``[BOS] + sum(sentence_ids) + [EOS]``; dropping those under ``min_tokens`` is the caller's.
    """
    units = [list(ids) for ids in sentence_ids if len(ids)]
    if not units:
        return DocSamples()
    if bos_id is not None:
        units[0].insert(0, bos_id)
    if eos_id is not None:
        units[-1].append(eos_id)
    result = DocSamples()
    samples: list[list[int]] = []
    current: list[int] = []
    for unit in units:
        if len(unit) > max_tokens:  # an over-long sentence: cut into max_tokens pieces
            result.sentences_cut += 1
            if current:
                samples.append(current)
                current = []
            pieces = [unit[i:i + max_tokens] for i in range(0, len(unit), max_tokens)]
            samples.extend(pieces[:-1])
            current = pieces[-1]
        elif len(current) + len(unit) > max_tokens:
            samples.append(current)
            current = unit
        else:
            current.extend(unit)
    if current:
        samples.append(current)
    result.samples = samples
    return result
