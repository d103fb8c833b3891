"""Rule-based sentence splitter for English and Chinese prose.

The hard part of sentence splitting is not finding full stops but deciding
which full stops do *not* end a sentence: "Dr. Rao", "3.5 km", "e.g. this",
"U.S. Navy". This module uses a short abbreviation list plus a few
look-ahead rules, which handles encyclopedia text reasonably well.

>>> split_sentences('Dr. Rao moved to the U.S. in 1990. She was 11.')
['Dr. Rao moved to the U.S. in 1990.', 'She was 11.']
>>> split_sentences('他说：“我们明天出发。”然后就走了。真的吗？')
['他说：“我们明天出发。”', '然后就走了。', '真的吗？']
"""

from __future__ import annotations

import re
from typing import List

ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "inc", "ltd",
    "co", "corp", "no", "fig", "approx", "dept", "est", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "e.g", "i.e", "u.s", "u.k",
    "a.m", "p.m", "ph.d", "m.s", "b.a",
}

# Abbreviations that are usually followed by a name or number, so even a
# capital letter after them does not start a new sentence.
_TITLES = {"mr", "mrs", "ms", "dr", "prof", "st", "mt", "no", "fig", "e.g", "i.e", "approx"}

_CJK_END = "。！？"
_CLOSERS = "\"'”’）)」』】"
_EN_END = re.compile(r"([.!?]|\.\.\.|…)([\"'”’)\]]*)(\s+)")


def _last_word(text: str) -> str:
    m = re.search(r"([A-Za-z][A-Za-z.]*)\.?$", text)
    return m.group(1).lower().rstrip(".") if m else ""


def _split_english(text: str) -> List[str]:
    sentences: List[str] = []
    start = 0
    for m in _EN_END.finditer(text):
        end = m.end(2)
        candidate = text[start:end]
        after = text[m.end():m.end() + 1]
        word = _last_word(text[start:m.start(1) + 1])
        if m.group(1) == ".":
            if word in _TITLES:
                continue
            if word in ABBREVIATIONS and not after.isupper():
                continue
            if len(word) == 1 and word.isalpha() and after.isupper():
                continue  # an initial, as in "J. R. Smith"
        if after and after.islower():
            continue  # "... and then" keeps going
        sentences.append(candidate.strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _split_chinese(text: str) -> List[str]:
    sentences: List[str] = []
    buf: List[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        buf.append(ch)
        if ch in _CJK_END or (ch == "…" and text[i + 1:i + 2] == "…"):
            if ch == "…":
                buf.append(text[i + 1])
                i += 1
            # Keep closing quotes and brackets with the sentence they close.
            while i + 1 < len(text) and text[i + 1] in _CLOSERS:
                buf.append(text[i + 1])
                i += 1
            sentences.append("".join(buf).strip())
            buf = []
        i += 1
    rest = "".join(buf).strip()
    if rest:
        sentences.append(rest)
    return [s for s in sentences if s]


def split_sentences(text: str) -> List[str]:
    """Split ``text`` into sentences; paragraphs (blank lines) always split."""
    out: List[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split()) if not re.search(r"[\u4e00-\u9fff]", para) else para.strip()
        if not para:
            continue
        cjk = len(re.findall(r"[\u4e00-\u9fff]", para))
        if cjk > len(para) * 0.3:
            out.extend(_split_chinese(para))
        else:
            out.extend(_split_english(para))
    return out


if __name__ == "__main__":
    import doctest
    import sys

    doctest.testmod()
    text = sys.stdin.read() if not sys.stdin.isatty() else (
        "Harrowgate Bridge is 96.5 m long. It was designed by Thomas Pryce, "
        "who wrote that the piers had been \"sunk to the living rock.\" The bridge "
        "survived the flood of 1852... although the parapets were rebuilt."
    )
    for i, s in enumerate(split_sentences(text), 1):
        print(f"{i:>3}  {s}")
