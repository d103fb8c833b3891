"""A ROME edit of the fact fixture, served with ``edits`` (what the README's "Editing a fact" runs):
over real HTTP the raw-prompt route answers the new target where the fixture knew the old one."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from knowlm_ray.cli import main
from knowlm_ray.edit.facts import fact_requests, load_facts

pytestmark = pytest.mark.slow


def test_served_rome_edit_answers_the_new_target(ray_local, fact_model, tmp_path):
    from ray import serve

    from knowlm_ray.serve import launch

    facts = load_facts(fact_model)
    req = fact_requests(facts, 1, fmt="knowedit", seed=1)[0]
    (tmp_path / "r.jsonl").write_text(json.dumps(req) + "\n")
    main(["edit", "apply", "--model", str(fact_model), "--requests", str(tmp_path / "r.jsonl"), "--method", "rome",
          "--set", "fact_token=last", "--set", "context_template_length_params=[]",
          "--stats-data", str(fact_model / "facts.txt"), "--out", str(tmp_path / "edit")])  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.shutdown()  # Serve keeps the port of its first start; another module may have left one
    url = launch.start(str(fact_model), port=port, num_replicas=1, timeout_s=180, edits=[str(tmp_path / "edit")])
    try:

        def complete(prompt: str) -> str:
            body = {"prompt": prompt, "max_tokens": 3, "temperature": 0}
            r = requests.post(f"{url}/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"].strip()

        edited = complete(req["prompt"])
        other = req["locality"]["Relation_Specificity"][0]
        kept = complete(other["prompt"])
    finally:
        launch.stop()
    assert req["ground_truth"] != req["target_new"]
    assert edited == f"{req['target_new']}.", (edited, req)  # the fixture knew ground_truth here
    assert kept == f"{other['ground_truth']}.", (kept, other)
