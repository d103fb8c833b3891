"""A small prefix tree (trie) with counts, prefix search and longest match.

The longest-match lookup is the core of a greedy "maximum munch" tokenizer:
given a vocabulary of pieces, repeatedly take the longest piece that matches
at the current position.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple


class _Node:
    __slots__ = ("children", "terminal", "count", "value")

    def __init__(self) -> None:
        self.children: Dict[str, "_Node"] = {}
        self.terminal = False
        self.count = 0          # how many inserted words pass through this node
        self.value: object = None


class Trie:
    """Map from strings to optional values, with prefix queries.

    >>> t = Trie()
    >>> for w in ["tea", "ten", "tent", "to"]:
    ...     t.insert(w)
    >>> sorted(t.starts_with("te"))
    ['tea', 'ten', 'tent']
    >>> t.count_prefix("t")
    4
    >>> t.longest_prefix_of("tentacle")
    'tent'
    """

    def __init__(self) -> None:
        self._root = _Node()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, word: str) -> bool:
        node = self._find(word)
        return node is not None and node.terminal

    def insert(self, word: str, value: object = None) -> None:
        if word in self:
            # Re-inserting only updates the value; counts stay correct.
            self._find(word).value = value
            return
        node = self._root
        node.count += 1
        for ch in word:
            node = node.children.setdefault(ch, _Node())
            node.count += 1
        node.terminal = True
        node.value = value
        self._size += 1

    def get(self, word: str, default: object = None) -> object:
        node = self._find(word)
        if node is None or not node.terminal:
            return default
        return node.value

    def remove(self, word: str) -> bool:
        """Delete ``word``; returns False if it was not present."""
        if word not in self:
            return False
        node = self._root
        node.count -= 1
        for ch in word:
            child = node.children[ch]
            child.count -= 1
            if child.count == 0:
                # Nothing else passes through here: drop the whole branch.
                del node.children[ch]
                self._size -= 1
                return True
            node = child
        node.terminal = False
        node.value = None
        self._size -= 1
        return True

    def count_prefix(self, prefix: str) -> int:
        node = self._find(prefix)
        return node.count if node else 0

    def starts_with(self, prefix: str) -> Iterator[str]:
        node = self._find(prefix)
        if node is None:
            return
        stack: List[Tuple[_Node, str]] = [(node, prefix)]
        while stack:
            cur, text = stack.pop()
            if cur.terminal:
                yield text
            for ch, child in cur.children.items():
                stack.append((child, text + ch))

    def longest_prefix_of(self, text: str, start: int = 0) -> Optional[str]:
        """Longest stored word that is a prefix of ``text[start:]``."""
        node = self._root
        best_end = -1
        for i in range(start, len(text)):
            node = node.children.get(text[i])
            if node is None:
                break
            if node.terminal:
                best_end = i + 1
        return text[start:best_end] if best_end > 0 else None

    def _find(self, prefix: str) -> Optional[_Node]:
        node = self._root
        for ch in prefix:
            node = node.children.get(ch)
            if node is None:
                return None
        return node


def greedy_segment(text: str, vocab: Trie) -> List[str]:
    """Split ``text`` into the longest vocabulary pieces, char by char otherwise."""
    pieces = []
    i = 0
    while i < len(text):
        piece = vocab.longest_prefix_of(text, i) or text[i]
        pieces.append(piece)
        i += len(piece)
    return pieces


if __name__ == "__main__":
    vocab = Trie()
    for w in ["知识", "知识图谱", "图谱", "抽取", "信息", "信息抽取", "大学"]:
        vocab.insert(w)
    print(greedy_segment("江南大学研究信息抽取与知识图谱", vocab))
