"""Edit quality of ROME, MEMIT and FT-L on the fact-trained fixture (EasyEdit's metrics).

    .venv/bin/python benchmarks/editing.py [--people 24] [--edits 10] [--single 4] [--rome-layer 1] [--model DIR]
        [--out benchmarks/results/editing.md]

Builds the fixture (``knowlm_ray.edit.facts``: a 4-layer LLaMA that recalls every synthetic fact;
or uses ``--model``), writes ``--edits`` requests (each moves one person's fact to another value of
its relation) and scores, with ``knowlm_ray.edit.metrics``:

* ``rome single``: each request edited alone on the fresh model, scored, then reverted; means over
  the requests (EasyEdit's usual protocol). Once with C measured on the fixture's texts
  (``--stats-data facts.txt``), once with the identity;
* ``rome sequential``: the requests edited one after another, all scored at the end (retained);
* ``memit batch``: all requests at once;
* ``ft batch``: FT-L on all requests at once (the baseline), its change stored low-rank.

Reliability and generalization (the edited fact asked in its two other phrasings) are token
accuracies of the new target; locality is over every fact of the people not edited (their
argmax tokens unchanged); edit bytes are the edit.safetensors file against the fixture's weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURE_SETTINGS = {"fact_token": "last"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=24)
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--model", default=None, help="an existing fixture (else one is built)")
    ap.add_argument("--single", type=int, default=4, help="requests edited one at a time (the first N)")
    ap.add_argument("--rome-layer", type=int, default=1, help="ROME's layer (1: the default from depth for 4 layers)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/editing.md"))
    a = ap.parse_args()

    import torch

    from knowlm_ray.edit import metrics
    from knowlm_ray.edit.apply import edit_model, load_model
    from knowlm_ray.edit.facts import FactSpec, build_fact_model, fact_requests, load_facts
    from knowlm_ray.edit.requests import parse_request
    from knowlm_ray.edit.settings import load_settings
    from knowlm_ray.models.edit_delta import write_edit

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="editing-bench-"))
    model_dir = Path(a.model) if a.model else work / "facts"
    if not a.model:
        build_fact_model(model_dir, FactSpec(people=a.people), log=lambda s: None)
    facts = load_facts(model_dir)
    stats = str(model_dir / "facts.txt")
    records = fact_requests(facts, a.edits, fmt="knowedit", seed=1)
    requests = [parse_request(r, f"bench:{i}") for i, r in enumerate(records, 1)]
    edited = {r.subject for r in requests}
    unrelated = [(f.prompts[0], f.target) for f in facts if f.subject not in edited]
    for r in requests:
        r.locality, r.portability = [], []
    model, tok = load_model(model_dir)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fixture_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    loc_pairs = unrelated
    loc_before = metrics.predictions(model, tok, loc_pairs)

    def restore():
        model.load_state_dict(base)

    def measure(reqs):
        s = metrics.score(model, tok, reqs)["means"]
        loc = metrics.same_tokens(loc_before, metrics.predictions(model, tok, loc_pairs))
        return {"reliability": s["reliability"], "generalization": s["generalization"], "locality": sum(loc) / len(loc)}

    def run(method, reqs, overrides, stats_data):
        settings = load_settings(method, None, overrides)
        out = edit_model(
            model, tok, reqs, method, settings, model_dir=model_dir, stats_data=stats_data, log=lambda s: None
        )
        return out

    rows = []

    def row(name, fn):
        t0 = time.perf_counter()
        res, size, rank = fn()
        rows.append({"name": name, **res, "seconds": round(time.perf_counter() - t0, 1), "bytes": size, "rank": rank})
        print(json.dumps(rows[-1]), flush=True)
        restore()

    def saved_bytes(out, method, reqs):
        d = write_edit(
            work / f"edit-{method}-{len(rows)}",
            out.deltas,
            out.base,
            method=method,
            settings={},
            requests=[r.record() for r in reqs],
            model_dir=model_dir,
        )
        return (d / "edit.safetensors").stat().st_size

    def single(use_c):
        def fn():
            scores, sizes = [], []
            for r in requests[: a.single]:
                over = {**FIXTURE_SETTINGS, "layers": [a.rome_layer], "mom2_adjustment": use_c}
                out = run("rome", [r], over, stats if use_c else None)
                scores.append(measure([r]))
                sizes.append(saved_bytes(out, "rome", [r]))
                restore()
            mean = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
            return mean, max(sizes), 1

        return fn

    def batch(method, overrides, use_c=True):
        def fn():
            out = run(method, requests, overrides, stats if use_c else None)
            rank = max(int(u.shape[1]) for u, _ in out.deltas.values())
            return measure(requests), saved_bytes(out, method, requests), rank

        return fn

    lay = a.rome_layer
    row(f"rome single (first {a.single}), layer {lay}, C from facts.txt", single(True))
    row(f"rome single (first {a.single}), layer {lay}, identity C", single(False))
    row(f"rome {a.edits} sequential, layer {lay}, C", batch("rome", {**FIXTURE_SETTINGS, "layers": [lay]}))
    row(f"memit {a.edits} at once, layers 1-2, C", batch("memit", {**FIXTURE_SETTINGS, "layers": [1, 2]}))
    row(f"ft-l {a.edits} at once (layer 3, linf 1e-2)", batch("ft", {}))

    lines = [
        f"edit quality on the fact fixture ({len(facts)} facts of {len(facts) // 3} people, "
        f"{fixture_bytes} bytes of weights; {a.edits} requests; {platform.processor() or platform.machine()}, "
        f"1 torch thread)",
        "",
        "| run | reliability | generalization | locality | edit bytes | % of fixture | rank | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['reliability']:.3f} | {r['generalization']:.3f} | {r['locality']:.3f} | "
            f"{r['bytes']} | {100 * r['bytes'] / fixture_bytes:.2f} | {r['rank']} | {r['seconds']} |"
        )
    text = "\n".join(lines) + "\n"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
