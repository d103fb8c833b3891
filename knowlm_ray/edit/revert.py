"""`knowlm edit revert --model M --edit DIR --out OUT`: a model folder with an edit taken out again.

The model must carry the edit (``knowlm weights merge-edit`` wrote it, or it was recovered from a
folder that did): each edited weight must equal the edit's base plus its delta, by sha256 or within
float rounding (``knowlm_ray.models.edit_delta``); otherwise the command refuses, naming the
parameter. Streamed one tensor at a time; the output is written under a temporary name and renamed.
Several edits come out in the reverse of the order they went in.
"""

from __future__ import annotations

import argparse


def _revert(a: argparse.Namespace) -> None:
    from knowlm_ray.models.edit_delta import read_edit, revert_edit_dir

    edit = read_edit(a.edit)
    out = revert_edit_dir(a.model, a.edit, a.out)
    print(f"{out}: {a.model} without edit {a.edit} ({edit.method}, {len(edit.names)} parameters)")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``revert`` to the ``knowlm edit`` subcommands."""
    p = sub.add_parser(
        "revert",
        help="write a model folder with an edit removed (refuses a model that does not carry it)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder carrying the edit (merge-edit's output)")
    p.add_argument("--edit", required=True, metavar="DIR", help="the edit directory to take out")
    p.add_argument("--out", required=True, help="model folder to write")
    p.set_defaults(fn=_revert)
    return p
