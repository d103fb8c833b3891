"""A tiny byte-pair-encoding (BPE) tokenizer, trained from scratch.

This is a teaching implementation: it trains on a list of strings, keeps the
merges in order, and encodes new text by replaying those merges. Real
tokenizers add many refinements (byte fallback, normalisation, caching of
word encodings, regex pre-splitting); the core idea fits on one screen.

    >>> tok = BPETokenizer.train(["low lower lowest", "new newer newest"], vocab_size=40)
    >>> tok.decode(tok.encode("newest lower"))
    'newest lower'
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Dict, Iterable, List, Tuple

# Split into words (with a leading space kept as a marker, like GPT-2's "Ġ")
# and single punctuation characters. CJK characters become their own words.
_PRE_SPLIT = re.compile(r" ?[A-Za-z]+| ?[0-9]+|[\u4e00-\u9fff]| ?[^\sA-Za-z0-9\u4e00-\u9fff]+|\s+")

SPACE = "\u2581"  # "▁", the marker sentencepiece uses for a space
UNK = "<unk>"
SPECIALS = ("<pad>", UNK, "<s>", "</s>")


def pre_tokenize(text: str) -> List[str]:
    return [m.group(0).replace(" ", SPACE) for m in _PRE_SPLIT.finditer(text)]


def _pair_counts(words: Dict[Tuple[str, ...], int]) -> Counter:
    counts: Counter = Counter()
    for symbols, freq in words.items():
        for pair in zip(symbols, symbols[1:]):
            counts[pair] += freq
    return counts


def _apply_merge(symbols: Tuple[str, ...], pair: Tuple[str, str]) -> Tuple[str, ...]:
    merged = pair[0] + pair[1]
    out: List[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


class BPETokenizer:
    def __init__(self, vocab: Dict[str, int], merges: List[Tuple[str, str]]) -> None:
        self.vocab = vocab
        self.merges = merges
        self.id_to_token = {i: t for t, i in vocab.items()}
        self._rank = {pair: i for i, pair in enumerate(merges)}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1000, min_freq: int = 2) -> "BPETokenizer":
        word_freq: Counter = Counter()
        for text in texts:
            word_freq.update(pre_tokenize(text))
        words = {tuple(w): f for w, f in word_freq.items()}

        alphabet = sorted({ch for w in words for ch in w})
        vocab: Dict[str, int] = {}
        for tok in list(SPECIALS) + alphabet:
            vocab.setdefault(tok, len(vocab))

        merges: List[Tuple[str, str]] = []
        while len(vocab) < vocab_size:
            counts = _pair_counts(words)
            if not counts:
                break
            # Highest count wins; ties broken lexicographically for determinism.
            pair, freq = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
            if freq < min_freq:
                break
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            words = {_apply_merge(w, pair): f for w, f in words.items()}
        return cls(vocab, merges)

    def _encode_word(self, word: str) -> List[str]:
        symbols = tuple(word)
        while len(symbols) > 1:
            # Apply the earliest-learned merge that is present in the word.
            candidates = [(self._rank.get(p, 1 << 30), p) for p in zip(symbols, symbols[1:])]
            rank, best = min(candidates)
            if rank == 1 << 30:
                break
            symbols = _apply_merge(symbols, best)
        return list(symbols)

    def tokenize(self, text: str) -> List[str]:
        tokens: List[str] = []
        for word in pre_tokenize(text):
            tokens.extend(self._encode_word(word))
        return tokens

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> List[int]:
        unk = self.vocab[UNK]
        ids = [self.vocab.get(t, unk) for t in self.tokenize(text)]
        if add_bos:
            ids.insert(0, self.vocab["<s>"])
        if add_eos:
            ids.append(self.vocab["</s>"])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        pieces = [self.id_to_token.get(i, UNK) for i in ids]
        pieces = [p for p in pieces if p not in ("<s>", "</s>", "<pad>")]
        return "".join(pieces).replace(SPACE, " ")

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"vocab": self.vocab, "merges": [list(m) for m in self.merges]},
                      fh, ensure_ascii=False, indent=1)

    @classmethod
    def load(cls, path: str) -> "BPETokenizer":
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return cls(data["vocab"], [tuple(m) for m in data["merges"]])


if __name__ == "__main__":
    corpus = [
        "The lighthouse keeper wrote a line in the logbook every evening.",
        "The keeper of the lighthouse kept the logbooks on a shelf.",
        "江南大学位于临川市，青岚市位于云栖湖西岸。",
    ]
    tok = BPETokenizer.train(corpus * 3, vocab_size=120)
    sample = "The keeper wrote in the logbook."
    print(len(tok.vocab), "tokens;", tok.tokenize(sample))
    assert tok.decode(tok.encode(sample)) == sample
