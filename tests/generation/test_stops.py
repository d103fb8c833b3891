"""Stop strings: the incremental matcher and the streaming hold-back equal the plain whole-text
searches on random texts, stops and token cuts (stops spanning token boundaries included)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from knowlm_ray.generation.engine import StopMatcher, find_stop, safe_text_end

ALPHABET = "ab#\n浙江ー\ufffd"  # few symbols: stops occur, overlap and repeat often


def whole_text_hold(text: str, stops: Sequence[str]) -> int:
    """The hold-back as it was computed before: every prefix length of every stop, whole text."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), hold, -1):
            if text.endswith(s[:k], 0, end):
                hold = k
                break
    return end - hold


def random_stops(rng: random.Random) -> list[str]:
    return [
        "".join(rng.choice(ALPHABET.replace("\ufffd", "")) for _ in range(rng.randint(1, 6)))
        for _ in range(rng.randint(1, 4))
    ]


def token_prefixes(rng: random.Random, text: str) -> list[str]:
    """The decoded text after each token: random cuts, and now and then a token whose last
    character first decodes as U+FFFD (a byte-fallback character cut in two) and is rewritten."""
    out, pos = [], 0
    while pos < len(text):
        pos = min(len(text), pos + rng.randint(1, 4))
        if rng.random() < 0.15 and pos < len(text):
            out.append(text[: pos - 1] + "\ufffd")  # a partial character, rewritten next step
        out.append(text[:pos])
    return out


def test_incremental_matcher_equals_whole_text_search():
    rng = random.Random(0)
    found = 0
    for _ in range(500):
        stops = random_stops(rng)
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 80)))
        matcher = StopMatcher(stops)
        for prefix in token_prefixes(rng, text):
            got, want = matcher.find(prefix), find_stop(prefix, stops)
            assert got == want, (stops, prefix)
            if want is not None:  # the row ends at its first stop
                found += 1
                break
    assert 100 < found < 500  # both outcomes were exercised


def test_hold_back_equals_whole_text_search():
    rng = random.Random(1)
    held = 0
    for _ in range(500):
        stops = random_stops(rng)
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
        for prefix in token_prefixes(rng, text):
            want = whole_text_hold(prefix, stops)
            assert safe_text_end(prefix, stops) == want, (stops, prefix)
            held += want < len(prefix.rstrip("\ufffd"))
    assert held > 100


def test_a_stop_cut_across_tokens_is_found_where_it_starts():
    matcher = StopMatcher(["</answer>", "##"])
    pieces = ["The answer is 4", "2 </an", "swer", "> and more"]
    texts = ["".join(pieces[: k + 1]) for k in range(len(pieces))]
    assert [matcher.find(t) for t in texts] == [None, None, None, texts[-1].index("</answer>")]
    # streaming holds back "</an" and "</answer" while they could still become the stop
    assert safe_text_end(texts[1], ["</answer>"]) == texts[1].index("</an")
    assert safe_text_end(texts[2], ["</answer>"]) == texts[2].index("</an")


def test_the_earliest_stop_wins_when_two_complete_with_one_token():
    matcher = StopMatcher(["d", "bcd"])  # listed later, but it starts first
    assert matcher.find("ab") is None
    assert matcher.find("abcd") == 1


def test_matching_scans_only_the_new_text():
    """A long text searched token by token: each call looks at the new part plus a short tail,
    so the searched length per call stays bounded (counted through a str subclass)."""
    searched: list[int] = []

    class Counting(str):
        def find(self, sub, start=0, *rest):  # noqa: D401
            searched.append(len(self) - start)
            return str.find(self, sub, start, *rest)

    matcher = StopMatcher(["<stop>", "###"])
    text = ""
    for i in range(2000):
        text += f"w{i} "
        assert matcher.find(Counting(text)) is None
    assert max(searched) <= len(" w1999 ") + len("<stop>") - 1
