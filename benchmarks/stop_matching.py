"""Stop-string matching benchmark (issue 18, item 1): the cost of watching a streamed row for
its stop strings, per decode step, as the row's text grows; the whole-text search the engine
used before against ``StopMatcher`` + the tail-only hold-back, side by side in one run.

    .venv/bin/python benchmarks/stop_matching.py
    .venv/bin/python benchmarks/stop_matching.py --tokens 8000 --stop-chars 256

A row of ``--tokens`` steps, each adding a random 1-4 character piece (the decoded text after
each token), watched for 4 stop strings of ``--stop-chars`` characters that never occur (the
worst case: nothing ends the row early) but share their first characters with the text, so the
hold-back has candidates to check. Only the matching is timed, not the decode. The markdown
(with the command) is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import random
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from knowlm_ray.generation.engine import StopMatcher, safe_text_end  # noqa: E402


def old_find(text: str, stops) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def old_hold(text: str, stops) -> int:
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


def texts(tokens: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ab c浙江#"
    out, text = [], ""
    for _ in range(tokens):
        text += "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
        out.append(text)
    return out


def run(prefixes: list[str], stops: list[str], new: bool) -> tuple[float, list]:
    seen = []
    t0 = time.perf_counter()
    if new:
        matcher = StopMatcher(stops)
        for t in prefixes:
            seen.append((matcher.find(t), safe_text_end(t, stops)))
    else:
        for t in prefixes:
            seen.append((old_find(t, stops), old_hold(t, stops)))
    return time.perf_counter() - t0, seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[500, 2000, 8000])
    ap.add_argument("--stop-chars", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stop_matching.md"))
    args = ap.parse_args(argv)
    stops = [("ab c" * args.stop_chars)[: args.stop_chars - 1] + z for z in "XYZW"]  # never in the text
    lines = [
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} — `{shlex.join(['.venv/bin/python', 'benchmarks/stop_matching.py', *(argv or sys.argv[1:])])}`\n",
        f"{platform.machine()}, Python {platform.python_version()}; 4 stops of {args.stop_chars} characters; "
        f"best of {args.repeats}\n",
        "| tokens | text chars | whole-text ms | incremental ms | per step, µs (whole / incremental) | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in args.tokens:
        prefixes = texts(n)
        old = min(run(prefixes, stops, new=False)[0] for _ in range(args.repeats))
        new = min(run(prefixes, stops, new=True)[0] for _ in range(args.repeats))
        assert run(prefixes, stops, True)[1] == run(prefixes, stops, False)[1], "results differ"
        lines.append(
            f"| {n} | {len(prefixes[-1])} | {1000 * old:.1f} | {1000 * new:.1f} | "
            f"{1e6 * old / n:.1f} / {1e6 * new / n:.1f} | {old / new:.1f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
