"""Self-Instruct's novelty check: ROUGE-L F1 of a new instruction against every one so far.

Google's ``rouge_score`` (what Self-Instruct and EasyInstruct call) with a tokenizer that keeps
Chinese: its default one lowercases and drops every character outside [a-z0-9], so two Chinese
instructions would always score 0. Here a CJK character is one token and other text is split
into lowercase alphanumeric words, as the default does.
"""

from __future__ import annotations

import re

from rouge_score import rouge_scorer

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


class ScriptTokenizer:
    """``rouge_score`` tokenizer protocol: ``tokenize(text) -> list[str]``."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


class RougePool:
    """The instructions seen so far; ``check`` scores a candidate against all of them."""

    def __init__(self, instructions: list[str] = (), threshold: float = 0.7):
        self.threshold = threshold
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=ScriptTokenizer())
        self.instructions: list[str] = list(instructions)

    def best(self, candidate: str) -> tuple[float, str | None]:
        """The highest ROUGE-L F1 against the pool and the instruction that has it."""
        top, who = 0.0, None
        for inst in self.instructions:
            f = self._scorer.score(inst, candidate)["rougeL"].fmeasure
            if f > top:
                top, who = f, inst
        return top, who

    def novel(self, candidate: str) -> tuple[bool, float, str | None]:
        """Kept (and added to the pool) when no instruction scores above the threshold."""
        score, who = self.best(candidate)
        if score > self.threshold:
            return False, score, who
        self.instructions.append(candidate)
        return True, score, who

    def remove(self, instruction: str) -> None:
        """Take back an instruction whose task did not finish (its records are not written)."""
        for i in range(len(self.instructions) - 1, -1, -1):
            if self.instructions[i] == instruction:
                del self.instructions[i]
                return
