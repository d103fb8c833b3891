"""Self-Instruct's novelty check: ROUGE-L F1 of a new instruction against every one so far.

The score is ``rouge_score``'s ``rougeL`` F-measure (what Self-Instruct and EasyInstruct call):
LCS over tokens, P = LCS / candidate tokens, R = LCS / reference tokens, F = 2PR / (P + R). It is
computed here rather than through that package because (1) its tokenizer drops every character
outside [a-z0-9], so two Chinese instructions always score 0 (here a CJK character is one token,
other text lowercase alphanumeric words, as its tokenizer splits them); (2) importing it imports
NLTK, ~4.6 CPU-seconds per job start on this machine; (3) it re-tokenizes the whole pool for
every candidate, while the pool here keeps its tokens and skips an entry whose length or
shared tokens bound F below the best so far.
"""

from __future__ import annotations

import re
from collections import Counter

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: list[str], candidate: list[str]) -> float:
    """ROUGE-L F1 of two token lists (0 when either is empty)."""
    if not reference or not candidate:
        return 0.0
    lcs = lcs_length(reference, candidate)
    return 0.0 if lcs == 0 else 2 * lcs / (len(reference) + len(candidate))  # = 2PR / (P + R)


class RougePool:
    """The instructions seen so far; ``novel`` scores a candidate against all of them."""

    def __init__(self, instructions: list[str] = (), threshold: float = 0.7):
        self.threshold = threshold
        self.instructions: list[str] = []
        self._tokens: list[list[str]] = []
        self._bags: list[Counter] = []
        for inst in instructions:
            self.add(inst)

    def add(self, instruction: str) -> None:
        self.instructions.append(instruction)
        self._tokens.append(tokenize(instruction))
        self._bags.append(Counter(self._tokens[-1]))

    def best(self, candidate: str) -> tuple[float, str | None]:
        """The highest ROUGE-L F1 against the pool and the instruction that has it."""
        cand = tokenize(candidate)
        bag = Counter(cand)
        top, who = 0.0, None
        for inst, toks, other in zip(self.instructions, self._tokens, self._bags):
            n = len(toks) + len(cand)
            # Upper bounds on the LCS, cheapest first: the shorter length, then the shared tokens
            # (a common subsequence uses each token at most as often as both have it).
            if 2 * min(len(toks), len(cand)) <= top * n or 2 * sum((bag & other).values()) <= top * n:
                continue
            f = rouge_l(toks, cand)
            if f > top:
                top, who = f, inst
        return top, who

    def novel(self, candidate: str) -> tuple[bool, float, str | None]:
        """Kept (and added to the pool) when no instruction scores above the threshold."""
        score, who = self.best(candidate)
        if score > self.threshold:
            return False, score, who
        self.add(candidate)
        return True, score, who

    def remove(self, instruction: str) -> None:
        """Take back an instruction whose task did not finish (its records are not written)."""
        for i in range(len(self.instructions) - 1, -1, -1):
            if self.instructions[i] == instruction:
                del self.instructions[i], self._tokens[i], self._bags[i]
                return
