"""evaluate: extraction scores end to end with an oracle model double; perplexity against HF's loss."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pyarrow as pa
import pytest

from knowlm_ray.ie.batch import schema_from_gold
from knowlm_ray.ie.evaluate import evaluate_extraction, perplexity
from knowlm_ray.ie.parsers import FIELD
from knowlm_ray.ie.records import load_ie_records, load_schema
from knowlm_ray.ie.templates import TEMPLATES, render_output

REPO = Path(__file__).resolve().parents[2]
IE = REPO / "data" / "sample" / "ie"


def alpaca_halves(prompt: str) -> tuple[str, str]:
    """(instruction, input) of a whole alpaca prompt: what a generate_fn now receives."""
    rest = prompt.partition("### Instruction:\n")[2]
    instruction, _, rest = rest.partition("\n\n### Input:\n")
    return instruction, rest.rsplit("\n\n### Response:\n", 1)[0]


class GoldOracle:
    """A test double that answers every prompt with the gold items of the labels it lists."""

    def __init__(self, records, fmt="json"):
        self.by_text = {r["text"]: r for r in records}
        self.fmt = fmt

    def __call__(self, pairs):
        out = []
        for instruction, text in map(alpaca_halves, pairs):
            rec = self.by_text[text]
            task = next(t for t in TEMPLATES if TEMPLATES[t][rec["lang"]][0].split("{")[0] in instruction)
            label = {"ner": "type", "re": "relation", "ee": "type"}[task]
            items = [
                x for x in rec[FIELD[task]] if (f'"{x[label]}": [' if task == "ee" else f'"{x[label]}"') in instruction
            ]
            out.append(render_output(task, rec["lang"], self.fmt, items))
        return out


@pytest.mark.parametrize("fmt", ["json", "tuple"])
def test_oracle_scores_perfectly_through_the_whole_path(fmt):
    gold = load_ie_records(IE / "records.jsonl")[:40]
    if fmt == "tuple":  # the tuple format cannot hold spans with commas or brackets
        from knowlm_ray.ie.templates import tuple_safe

        gold = [g for g in gold if all(tuple_safe(g[f]) for f in FIELD.values())]
    schema = load_schema(IE / "schema.json")
    preds, scores = evaluate_extraction(gold, schema, GoldOracle(gold, fmt), docs_per_call=16)
    assert [p["id"] for p in preds] == [g["id"] for g in gold]
    for task in ("ner", "re"):
        assert scores[task]["micro"]["f1"] == 1.0 and scores[task]["micro"]["gold"] > 10, task
    assert scores["ee"]["trigger"]["micro"]["f1"] == 1.0 == scores["ee"]["argument"]["micro"]["f1"]
    assert all(p["dropped"] == [] and p["unparsed"] == 0 for p in preds)
    # every predicted span is anchored in the text
    assert all(e["start"] is not None for p in preds for e in p["entities"])


def test_schema_from_gold_and_a_worse_model():
    gold = load_ie_records(IE / "records.jsonl")[:20]
    schema = schema_from_gold(gold)
    assert set(schema) == {"zh", "en"} and "人物" in schema["zh"]["ner"]
    _, scores = evaluate_extraction(gold, schema, lambda pairs: ["无"] * len(pairs), tasks=["ner"])
    assert scores["ner"]["micro"]["recall"] == 0.0 and scores["ner"]["predicted"] == 20


def _write_shard(path: Path, rows):
    from knowlm_ray.corpus.schema import SHARD_SCHEMA

    path.mkdir(parents=True)
    table = pa.table(
        {"input_ids": rows, "doc_id": [str(i) for i in range(len(rows))], "source": ["s"] * len(rows)},
        schema=SHARD_SCHEMA,
    )
    with pa.OSFile(str(path / "part-00000.arrow"), "wb") as sink, pa.ipc.new_file(sink, SHARD_SCHEMA) as w:
        w.write_table(table)


@pytest.mark.slow
def test_perplexity_matches_hf_loss_and_the_job_runs(tiny_model, tmp_path, ray_local):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    texts = ["鲁迅，原名周树人，1881年出生于浙江绍兴。", "Marie Curie was born in Warsaw.", "浙江大学位于杭州市。" * 3]
    rows = [tok(t)["input_ids"] for t in texts]
    got = perplexity(model, rows, batch_size=2, pad_id=tok.pad_token_id or 0)
    nll = tokens = 0
    with torch.inference_mode():
        for r in rows:  # HF's mean loss per row, re-weighted by its predicted tokens
            ids = torch.tensor([r])
            nll += float(model(input_ids=ids, labels=ids).loss) * (len(r) - 1)
            tokens += len(r) - 1
    assert got["tokens"] == tokens and got["rows"] == 3
    assert got["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert 10 < got["perplexity"] < 100_000  # a random 3000-token model: about the vocabulary size

    _write_shard(tmp_path / "corpus" / "shards", rows)
    job = _evaluate_job()
    report = job.main(
        [
            "--config",
            str(REPO / "jobs" / "configs" / "tiny_eval.yaml"),
            f"model={tiny_model}",
            f"shards={tmp_path / 'corpus'}",
            f"out_dir={tmp_path / 'eval'}",
            "limit=3",
            "max_tokens=4",
            "tasks=[ner, re]",
        ]
    )
    assert report["perplexity"]["perplexity"] == pytest.approx(got["perplexity"], rel=1e-4)
    assert set(report["extraction"]["scores"]) == {"ner", "re"} and report["extraction"]["documents"] == 3
    saved = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    assert saved["extraction"]["scores"]["ner"]["documents"] == 3
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 3


def _evaluate_job():
    spec = importlib.util.spec_from_file_location("evaluate_job", REPO / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


@pytest.mark.parametrize("key", ["model", "gold"])
def test_job_names_a_bad_input_path_and_exits_2(key, tiny_model, tmp_path, ray_local, capsys):
    paths = {
        "model": str(tiny_model),
        "gold": str(REPO / "data" / "sample" / "ie" / "records.jsonl"),
        key: str(tmp_path / "missing"),
    }
    with pytest.raises(SystemExit) as exit_:
        _evaluate_job().main(
            [
                "--config",
                str(REPO / "jobs" / "configs" / "tiny_eval.yaml"),
                f"model={paths['model']}",
                f"gold={paths['gold']}",
                f"out_dir={tmp_path / 'eval'}",
            ]
        )
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the weight-loading progress bar
    assert last.startswith(f"error: {key}: ") and str(tmp_path / "missing") in last
