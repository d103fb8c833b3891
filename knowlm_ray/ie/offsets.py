"""Character offsets of extracted spans in the input text.

LLM extractors return strings; a span is anchored here to ``text[start:end]``. The search
prefers, in order: an exact occurrence inside the window the span was extracted from (its text
chunk), an exact occurrence anywhere, then the same two after NFKC + case folding (the model wrote
``（`` for ``(`` or ``marie curie`` for ``Marie Curie``) — in which case the span is rewritten to
the text's own characters. Repeated spans take successive occurrences: the first occurrence not
already used by the same span (under the caller's ``key``); once all are used, the first one.
A span the text does not contain gets ``None``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Hashable


def _fold(s: str) -> str:
    return unicodedata.normalize("NFKC", s).casefold()


def _occurrences(haystack: str, needle: str) -> list[int]:
    out, i = [], haystack.find(needle)
    while i >= 0:
        out.append(i)
        i = haystack.find(needle, i + 1)
    return out


class SpanLocator:
    """Finds spans in one text; remembers which occurrences each key has used."""

    def __init__(self, text: str):
        self.text = text
        self._folded: tuple[str, list[int]] | None = None
        self.used: dict[Hashable, set[int]] = {}

    def _fold_map(self) -> tuple[str, list[int]]:
        """The folded text and, per folded character, the index of its source character."""
        if self._folded is None:
            chars, origin = [], []
            for k, c in enumerate(self.text):
                f = _fold(c)
                chars.append(f)
                origin.extend([k] * len(f))
            self._folded = ("".join(chars), origin)
        return self._folded

    def _candidates(self, span: str) -> list[list[tuple[int, int]]]:
        """Exact occurrences, then folded ones (as original (start, end)), each in text order."""
        exact = [(i, i + len(span)) for i in _occurrences(self.text, span)]
        folded_span = _fold(span)
        folded: list[tuple[int, int]] = []
        if folded_span and folded_span != span or not exact:
            ftext, origin = self._fold_map()
            for i in _occurrences(ftext, folded_span) if folded_span else []:
                j = i + len(folded_span)
                # Only matches that start and end on whole source characters.
                if (i == 0 or origin[i - 1] != origin[i]) and (j == len(origin) or origin[j - 1] != origin[j]):
                    pair = (origin[i], origin[j - 1] + 1)
                    if pair not in exact:
                        folded.append(pair)
        return [exact, folded]

    def find(
        self, span: str, key: Hashable = None, window: tuple[int, int] | None = None, avoid: set[int] | None = None
    ) -> tuple[int, int] | None:
        """``(start, end)`` of ``span`` in the text, or None; marks the occurrence used for ``key``.

        ``avoid``: starts not to take (e.g. the head's occurrence when placing a same-text tail).
        """
        if not span:
            return None
        used = self.used.setdefault(key, set()) if key is not None else set()
        blocked = used | (avoid or set())
        groups = self._candidates(span)
        everything = [p for g in groups for p in g]
        if not everything:
            return None
        choice = None
        for group in groups:
            if window is not None:
                lo, hi = window
                choice = next((p for p in group if lo <= p[0] and p[1] <= hi and p[0] not in blocked), None)
            if choice is None:
                choice = next((p for p in group if p[0] not in blocked), None)
            if choice is not None:
                break
        if choice is None:  # every occurrence already taken: share the first
            choice = everything[0]
        used.add(choice[0])
        return choice

    def anchor(self, span: str, **kw) -> tuple[str, int | None, int | None]:
        """(span as written in the text, start, end); the span unchanged with None when not found."""
        pos = self.find(span, **kw)
        if pos is None:
            return span, None, None
        return self.text[pos[0] : pos[1]], pos[0], pos[1]


def span_offsets(text: str, span: str) -> tuple[int, int] | None:
    """First occurrence of ``span`` in ``text`` (exact, else after NFKC + case folding)."""
    return SpanLocator(text).find(span)
