from __future__ import annotations

import json

import pytest

from knowlm_ray.edit.facts import fact_requests, load_facts


@pytest.mark.slow
def test_evaluate_job_reports_editing_metrics(fact_model, tmp_path):
    """jobs/evaluate.py's optional edit: section gives what `knowlm edit eval` gives."""
    from knowlm_ray.config import EvaluateConfig
    from knowlm_ray.edit.evaluation import evaluate_edit
    from knowlm_ray.ie.evaluate import run

    reqs = tmp_path / "r.jsonl"
    reqs.write_text(json.dumps(fact_requests(load_facts(fact_model), 1, fmt="knowedit", seed=2)[0]) + "\n")
    cfg = EvaluateConfig(model=str(fact_model), edit={"requests": str(reqs)}, out_dir=str(tmp_path / "eval"))
    report = run(cfg, progress=False)
    direct = evaluate_edit(fact_model, reqs)
    assert report["editing"]["before"] == direct["before"]
    means = report["editing"]["before"]["means"]
    assert means["reliability"] < 1.0 and means["locality"] == 1.0 and means["portability"] == 1.0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["editing"]["requests"] == 1
