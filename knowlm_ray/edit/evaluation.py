"""``knowlm edit eval``: EasyEdit's four metrics before and after an edit, as a table and JSON.

The requests' prompts are scored on the model as it is ("before"), then with the edit directory
applied in memory ("after"; the edit must have been computed on this model), and with ``ike``
also with IKE's in-context demonstrations on the unedited model. Every request of the file is
scored on the model carrying the whole edit (the state after a batch or after sequential edits,
not one edit at a time). Locality compares each state's argmax tokens with the unedited model's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from knowlm_ray.atomic import atomic_write_text
from knowlm_ray.edit import metrics
from knowlm_ray.edit.requests import load_requests

ROW_NAMES = {"before": "before", "after": "after edit", "ike": "IKE (prompt)"}


def evaluate_edit(
    model_dir, requests_path, *, edit_dir=None, ike: bool = False, device: str = "cpu", dtype: str = "float32"
) -> dict[str, Any]:
    """{"before": {...}, "after": {...}, "ike": {...}} of metrics.score results, plus counts."""
    from knowlm_ray.edit.apply import load_model

    t0 = time.perf_counter()
    rs = load_requests(requests_path)
    model, tok = load_model(model_dir, device, dtype)
    reqs = rs.requests
    loc = metrics.locality_tokens(model, tok, reqs)
    report: dict[str, Any] = {
        "model": str(model_dir),
        "requests": len(reqs),
        "quarantined": rs.quarantined,
        "edit": str(edit_dir) if edit_dir else None,
        "before": metrics.score(model, tok, reqs, locality_before=loc),
    }
    if ike:
        from knowlm_ray.edit.ike import ike_prompter

        report["ike"] = metrics.score(model, tok, reqs, locality_before=loc, prefix=ike_prompter(reqs))
    if edit_dir is not None:
        from knowlm_ray.models.edit_delta import apply_edit, read_edit

        edit = read_edit(edit_dir)
        apply_edit(model, edit)
        report["method"] = edit.method
        report["after"] = metrics.score(model, tok, reqs, locality_before=loc)
    report["elapsed_s"] = round(time.perf_counter() - t0, 2)
    return report


def table(report: dict[str, Any]) -> str:
    """The means as a fixed-width table ("-" where a metric has no prompts)."""
    cols = metrics.METRICS
    lines = [f"{'':14}" + "".join(f"{c:>16}" for c in cols)]
    for key, label in ROW_NAMES.items():
        if key in report:
            means = report[key]["means"]
            lines.append(
                f"{label:14}" + "".join(f"{'-' if means[c] is None else format(means[c], '.3f'):>16}" for c in cols)
            )
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    atomic_write_text(Path(path), json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return Path(path)
