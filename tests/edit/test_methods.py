"""Each method on the fact fixture, from requests written in KnowEdit, ZsRE and plain format,
through `knowlm edit apply` / `edit eval` (and the refusals)."""

from __future__ import annotations

import json

import pytest

from knowlm_ray.cli import main
from knowlm_ray.edit.facts import fact_requests, load_facts

pytestmark = pytest.mark.slow
FIXTURE = ["--set", "fact_token=last", "--set", "context_template_length_params=[]"]


def _requests(fact_model, tmp_path, n, fmt, name):
    f = tmp_path / f"{name}.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in fact_requests(load_facts(fact_model), n, fmt=fmt, seed=1)) + "\n")
    return f


def _apply(fact_model, requests, method, out, *extra):
    main(["edit", "apply", "--model", str(fact_model), "--requests", str(requests), "--method", method,
          "--out", str(out), *extra])  # fmt: skip


def _eval(fact_model, requests, edit, report):
    main(["edit", "eval", "--model", str(fact_model), "--requests", str(requests), "--edit", str(edit),
          "--report", str(report)])  # fmt: skip
    return json.loads(report.read_text())


def test_rome_knowedit(fact_model, tmp_path, capsys):
    reqs = _requests(fact_model, tmp_path, 2, "knowedit", "knowedit")
    stats = fact_model / "facts.txt"
    _apply(fact_model, reqs, "rome", tmp_path / "rome", *FIXTURE, "--stats-data", str(stats))
    out = capsys.readouterr().out
    assert "key covariance: computed from" in out and "rome edit of 2 request(s)" in out
    manifest = json.loads((tmp_path / "rome" / "manifest.json").read_text())
    assert manifest["method"] == "rome" and len(manifest["requests"]) == 2
    assert manifest["settings"]["layers"] == [1]  # 4 layers: EasyEdit's layer 5 of 32 scaled
    r = _eval(fact_model, reqs, tmp_path / "rome", tmp_path / "rome.json")
    assert r["before"]["means"]["reliability"] < 0.5
    assert r["after"]["means"]["reliability"] >= 0.75  # both sequential edits retained
    assert r["after"]["means"]["locality"] >= 0.6
    assert "after edit" in capsys.readouterr().out


def test_memit_zsre(fact_model, tmp_path):
    reqs = _requests(fact_model, tmp_path, 3, "zsre", "zsre")
    _apply(fact_model, reqs, "memit", tmp_path / "memit", *FIXTURE, "--set", "layers=[1,2]",
           "--stats-data", str(fact_model / "facts.txt"))  # fmt: skip
    r = _eval(fact_model, reqs, tmp_path / "memit", tmp_path / "memit.json")
    assert r["after"]["means"]["reliability"] > r["before"]["means"]["reliability"] + 0.3
    assert set(json.loads((tmp_path / "memit" / "manifest.json").read_text())["settings"]["covariance"]) == {"1", "2"}


def test_ft_plain_low_rank(fact_model, tmp_path, capsys):
    from safetensors import safe_open

    reqs = _requests(fact_model, tmp_path, 2, "plain", "plain")
    _apply(fact_model, reqs, "ft", tmp_path / "ft", "--set", "rank=4")
    summary = json.loads(capsys.readouterr().out.split("\nft edit of")[0].split("\n{", 1)[1].join(["{", ""]))
    with safe_open(str(tmp_path / "ft" / "edit.safetensors"), "pt") as fh:
        u = fh.get_tensor("model.layers.3.mlp.down_proj.weight.u")
    assert u.shape[1] == 4 and summary["params"] == {"model.layers.3.mlp.down_proj.weight": 4}
    # the baseline under its norm bound moves the targets, measured after the rank-4 truncation
    assert summary["target_logprob_after"] > summary["target_logprob_before"] + 0.5


def test_refusals(fact_model, tmp_path, capsys):
    reqs = _requests(fact_model, tmp_path, 1, "plain", "one")
    with pytest.raises(SystemExit) as e:
        _apply(fact_model, reqs, "rome", tmp_path / "x", "--set", "layers=[7]")
    assert e.value.code == 2
    assert "rome.layers: layer 7 is not in this model (it has layers 0-3)" in capsys.readouterr().err
    # one Adam step is no step: v* is the current value, and the edit changes nothing
    with pytest.raises(SystemExit):
        _apply(fact_model, reqs, "rome", tmp_path / "x", *FIXTURE, "--set", "v_num_grad_steps=1")
    err = capsys.readouterr().err
    assert f"did not make the target likelier for 1 of 1 requests: {reqs}:1" in err
    assert not (tmp_path / "x").exists()
