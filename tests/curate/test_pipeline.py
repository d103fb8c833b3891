"""The curation job on a local Ray: planted records dropped by the right selector, counts that add
up, IEPile / ShareGPT / kg2instruct records through the same chain, prepare_instructions' reader
on kept.jsonl, a byte-identical rerun, perplexity under the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowlm_ray.curate.config import CurateConfig
from knowlm_ray.curate.pipeline import run
from tests.curate.conftest import NOISE, TAUGHT, write_jsonl

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
IE = REPO / "data" / "sample" / "ie"
CODE = "```python\ndef gcd(a, b):\n    while b:\n        if a < b:\n            a, b = b, a\n        a, b = b, a % b\n    return a\n\nprint([gcd(x, 12) for x in range(1, 30) if x % 2])\n```"

# (record, the selector expected to drop it or None)
PLANTED = [
    (
        {
            "instruction": "Name three rivers in Europe.",
            "input": "",
            "output": "The Danube, the Rhine and the Thames flow through Europe.",
        },
        None,
    ),
    (
        {
            "instruction": "Name three rivers in Europe.",
            "input": "",
            "output": "The Danube, the Rhine and the Thames flow through Europe.",
        },
        "exact_dedup",
    ),
    (
        {
            "instruction": "name  three rivers in Europe. ",
            "input": "",
            "output": "The Danube, the Rhine and the Thames flow through Europe.",
        },
        "exact_dedup",
    ),
    (
        {
            "instruction": "Please name three rivers in Europe.",
            "input": "",
            "output": "Volga, Loire and Po are European rivers as well.",
        },
        "rouge_dedup",
    ),
    ({"instruction": "请列出欧洲的三条河流。", "input": "", "output": "多瑙河、莱茵河和泰晤士河都流经欧洲。"}, None),
    (
        {"instruction": "请列出欧洲的三条主要河流。", "input": "", "output": "伏尔加河、卢瓦尔河与波河也是欧洲河流。"},
        "rouge_dedup",
    ),
    ({"instruction": "Reply with one word.", "input": "", "output": "ok"}, "length"),
    (
        {
            "instruction": "Praise the product.",
            "input": "",
            "output": "good good good good good good good good good good good good good good",
        },
        "mtld",
    ),
    ({"instruction": "Write code that prints one.", "input": "", "output": "```python\nprint(1)\n```"}, "cirs"),
    ({"instruction": "Write a gcd function and use it.", "input": "", "output": CODE}, None),
    (
        {
            "instruction": "Beschreibe den Fluss.",
            "input": "",
            "output": "Der Fluss fließt ruhig durch die alte Stadt und unter der Brücke.",
        },
        "language",
    ),
    (
        {
            "instruction": "How can I reach the office?",
            "input": "",
            "output": "Write to office@example.com or call +44 20 7946 0958 before noon.",
        },
        None,
    ),
    (
        {
            "instruction": "Which server failed?",
            "input": "",
            "output": "The server at 10.2.33.4 failed twice last night, then recovered.",
        },
        None,
    ),
]
MASKED = {
    11: "Write to <EMAIL> or call <PHONE> before noon.",
    12: "The server at <IP> failed twice last night, then recovered.",
}
CHAIN = [
    {"name": "exact_dedup", "fields": ["instruction", "input", "output"]},
    {"name": "rouge_dedup", "threshold": 0.7, "fields": ["instruction", "input"]},
    {"name": "length", "field": "output", "min_chars": 5},
    {"name": "cirs", "field": "output", "min": 5},
    {"name": "mtld", "field": "output", "min": 5, "max": 1e9},
    {"name": "language", "langs": ["zh", "en"]},
    {"name": "pii", "action": "mask"},
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from knowlm_ray.instruct.kg2instruct import main as kg2instruct

    d = tmp_path_factory.mktemp("curate_in")
    planted = write_jsonl(d / "planted.jsonl", [r for r, _ in PLANTED] + ["{broken json", '{"neither": 1}'])
    alpaca = d / "kg.json"  # kg2instruct's alpaca JSON list
    iepile = d / "iepile.jsonl"  # kg2instruct --format oneke: IEPile records
    common = ["--records", str(IE / "records.jsonl"), "--schema", str(IE / "schema.json"), "--limit", "4"]
    assert kg2instruct([*common, "--out", str(alpaca)]) == 0
    assert kg2instruct([*common, "--out", str(iepile), "--format", "oneke"]) == 0
    share = write_jsonl(
        d / "share.jsonl",
        [
            {
                "conversations": [
                    {"from": "human", "value": "What is the capital of France?"},
                    {"from": "gpt", "value": "Paris is the capital and the largest city of France."},
                ]
            },
            {
                "messages": [
                    {"role": "user", "content": "杭州在哪里？"},
                    {"role": "assistant", "content": "杭州位于中国浙江省北部，西湖就在杭州。"},
                ]
            },
        ],
    )
    return [planted, str(alpaca), str(iepile), share]


@pytest.fixture(scope="module")
def curated(ray_local, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("curate_out") / "curated"
    cfg = CurateConfig(inputs=inputs, out_dir=str(out), seed=0, selectors=CHAIN)
    return cfg, run(cfg)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_planted_records_dropped_by_their_selector(curated, inputs):
    cfg, manifest = curated
    out = Path(cfg.out_dir)
    dropped = {(d["file"], d["line"]): d for d in _lines(out / "dropped.jsonl")}
    for i, (rec, why) in enumerate(PLANTED):
        got = dropped.get((inputs[0], i + 1))
        assert (got["selector"] if got else None) == why, (i, rec, got)
        if got:
            assert got["record"] == rec
    assert dropped[(inputs[0], 2)]["value"] == {"of": f"{inputs[0]}:1"}
    assert (
        dropped[(inputs[0], 4)]["value"]["of"] == f"{inputs[0]}:1" and dropped[(inputs[0], 4)]["value"]["rouge_l"] > 0.7
    )
    assert dropped[(inputs[0], 7)]["value"] == 2  # the length that dropped it
    assert dropped[(inputs[0], 8)]["value"] < 5  # MTLD
    kept = out.joinpath("kept.jsonl").read_text(encoding="utf-8").splitlines()
    for i, text in MASKED.items():
        assert json.dumps({**PLANTED[i][0], "output": text}, ensure_ascii=False) in kept
    assert manifest["masked"] == {"pii": {"records": 2, "email": 1, "phone": 1, "ip": 1}}


def test_counts_add_up_and_malformed_quarantined(curated, inputs):
    cfg, m = curated
    out = Path(cfg.out_dir)
    kept, dropped = _lines(out / "kept.jsonl"), _lines(out / "dropped.jsonl")
    bad = _lines(out / "quarantine" / "malformed.jsonl")
    assert m["read"] == m["malformed"] + sum(m["dropped"].values()) + m["kept"]
    assert (m["kept"], sum(m["dropped"].values()), m["malformed"]) == (len(kept), len(dropped), len(bad))
    assert list(m["dropped"]) == [s["name"] for s in CHAIN]
    assert {(b["file"], b["line"]) for b in bad} == {(inputs[0], len(PLANTED) + 1), (inputs[0], len(PLANTED) + 2)}
    assert bad[0]["reason"].startswith("invalid JSON") and bad[0]["record"] == "{broken json"
    assert m["rouge_dedup"]["rouge_dedup"]["candidate_pairs"] < m["read"] ** 2 / 2


def test_kg2instruct_iepile_and_sharegpt_records_go_through_the_chain(curated, inputs):
    cfg, m = curated
    out = Path(cfg.out_dir)
    kept = out.joinpath("kept.jsonl").read_text(encoding="utf-8").splitlines()
    seen = {f: 0 for f in inputs}
    for d in _lines(out / "dropped.jsonl"):
        seen[d["file"]] += 1
    kg_rows = json.loads(Path(inputs[1]).read_text(encoding="utf-8"))
    iepile_rows = Path(inputs[2]).read_text(encoding="utf-8").splitlines()
    share_rows = Path(inputs[3]).read_text(encoding="utf-8").splitlines()
    # every record is either kept (as read) or dropped
    assert sum(json.dumps(r, ensure_ascii=False) in kept for r in kg_rows) + seen[inputs[1]] == len(kg_rows)
    assert sum(r in kept for r in iepile_rows) + seen[inputs[2]] == len(iepile_rows)
    assert all(r in kept for r in share_rows)
    assert any(json.dumps(r, ensure_ascii=False) in kept for r in kg_rows) and any(r in kept for r in iepile_rows)


def test_prepare_instructions_reads_kept_jsonl(curated):
    """prepare_instructions' own reader (the one its job runs; the Ray tokenisation after it is
    tested in tests/instruct) takes kept.jsonl: alpaca and IEPile rows, in OneKE's prompt for
    IEPile; ShareGPT conversations are not a format it trains."""
    from knowlm_ray.instruct.prepare import read_alpaca

    cfg, m = curated
    bad: list[dict] = []
    rows = read_alpaca(Path(cfg.out_dir) / "kept.jsonl", bad)
    assert (len(rows), len(bad)) == (m["kept"] - 2, 2)
    assert all("conversations" in b["record"] or "messages" in b["record"] for b in bad)
    assert any(r.get("prompt", "").startswith("[INST]") for r in rows)  # IEPile rows in OneKE's prompt


def test_rerun_is_byte_identical(curated):
    cfg, m = curated
    out = Path(cfg.out_dir)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert run(cfg) == m
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before


def test_perplexity_drops_noise_under_the_tiny_model(ray_local, taught_model, tmp_path):
    from knowlm_ray.curate.perplexity import Scorer

    recs = [{"instruction": "Answer.", "input": "", "output": a} for a in [*TAUGHT, NOISE]]
    scorer = Scorer(str(taught_model), 256)
    ppl = scorer.perplexity(recs)
    assert max(ppl[:-1]) * 10 < ppl[-1]  # what the selector relies on
    limit = (max(ppl[:-1]) * ppl[-1]) ** 0.5
    src = write_jsonl(tmp_path / "in.jsonl", recs)
    cfg = CurateConfig(
        inputs=[src],
        out_dir=str(tmp_path / "out"),
        selectors=[{"name": "perplexity", "model": str(taught_model), "max": limit, "batch_size": 2}],
    )
    m = run(cfg)
    assert (m["kept"], m["dropped"]) == (3, {"perplexity": 1})
    (d,) = _lines(tmp_path / "out" / "dropped.jsonl")
    assert d["line"] == 4 and d["value"] == pytest.approx(ppl[-1], rel=1e-3)
