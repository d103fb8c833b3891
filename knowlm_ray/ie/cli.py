"""`knowlm` subcommands for knowledge extraction (registered by knowlm_ray.cli).

    knowlm ie-score --task ner|re|ee --gold G.jsonl --pred P.jsonl [--match set|count] [--out F]
    knowlm ie-score --task ner|re|ee --iepile RESULTS.jsonl [--match normal|set] [--out F]

(``knowlm extract``, which asks a server or a local model, is a client: ``knowlm_ray.clients.extract``.)
"""

from __future__ import annotations

import argparse
import json


def _ie_score(a: argparse.Namespace) -> None:
    from knowlm_ray.atomic import write_json_atomic
    from knowlm_ray.errors import InputError

    if a.iepile:
        from knowlm_ray.ie.iepile_score import MATCHES, score_iepile

        if a.gold or a.pred:
            raise InputError("--iepile scores one IEPile result file: give it without --gold / --pred")
        if a.match and a.match not in MATCHES:
            raise InputError(f"--match {a.match}: with --iepile use {' or '.join(MATCHES)} (IEPile's modes)")
        result = score_iepile(a.iepile, a.task, a.match or "normal")
    else:
        from knowlm_ray.ie.scorer import MATCHES, score_files

        if not (a.gold and a.pred):
            raise InputError("give --gold and --pred (IE records), or --iepile RESULTS (an IEPile result file)")
        if a.match and a.match not in MATCHES:
            raise InputError(f"--match {a.match}: with --gold / --pred use {' or '.join(MATCHES)}")
        result = score_files(a.task, a.gold, a.pred, a.match or "set")
    if a.out:
        write_json_atomic(result, a.out)
    print(json.dumps(result, ensure_ascii=False, indent=1))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the IE subcommand (ie-score) to the `knowlm` parser."""
    p = sub.add_parser("ie-score", help="precision / recall / F1 of IE records against gold")
    p.add_argument("--task", required=True, choices=("ner", "re", "ee"))
    p.add_argument("--gold", help="gold IE records (jsonl)")
    p.add_argument("--pred", help="predicted IE records (jsonl), joined on id")
    p.add_argument(
        "--iepile",
        metavar="RESULTS",
        help="instead of --gold/--pred: an IEPile result file (id, source, instruction, label, output per "
        "line) scored as IEPile's eval_func does, on its 0-100 scale with its keys",
    )
    p.add_argument(
        "--match",
        default=None,
        choices=("set", "count", "normal"),
        help="records: set (default; de-duplicate per document) or count (one-to-one multisets); "
        "--iepile: normal (default; IEPile's multisets) or set",
    )
    p.add_argument("--out", help="also write the scores to this JSON file")
    p.set_defaults(fn=_ie_score)
