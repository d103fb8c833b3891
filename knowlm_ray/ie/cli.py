"""`knowlm` subcommands for knowledge extraction (registered by knowlm_ray.cli).

    knowlm ie-score --task ner|re|ee --gold G.jsonl --pred P.jsonl [--match set|count] [--out F]

(``knowlm extract``, which asks a server or a local model, is a client: ``knowlm_ray.clients.extract``.)
"""

from __future__ import annotations

import argparse
import json
import sys


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------------- ie-score
def _ie_score(a: argparse.Namespace) -> None:
    from knowlm_ray.atomic import write_json_atomic
    from knowlm_ray.ie.scorer import score_files

    try:
        result = score_files(a.task, a.gold, a.pred, a.match)
    except ValueError as exc:  # RecordError: bad path or bad gold line, named
        _fail(str(exc))
    if a.out:
        write_json_atomic(result, a.out)
    print(json.dumps(result, ensure_ascii=False, indent=1))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the IE subcommand (ie-score) to the `knowlm` parser."""
    p = sub.add_parser("ie-score", help="precision / recall / F1 of IE records against gold")
    p.add_argument("--task", required=True, choices=("ner", "re", "ee"))
    p.add_argument("--gold", required=True, help="gold IE records (jsonl)")
    p.add_argument("--pred", required=True, help="predicted IE records (jsonl), joined on id")
    p.add_argument(
        "--match",
        default="set",
        choices=("set", "count"),
        help="set: de-duplicate per document; count: one-to-one multiset matching",
    )
    p.add_argument("--out", help="also write the scores to this JSON file")
    p.set_defaults(fn=_ie_score)
