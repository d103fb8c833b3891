"""The P/R/F1 scorer: exact agreement with seqeval on NER (through BIO), hand-computed RE/EE."""

from __future__ import annotations

import json
import random
import warnings

import pytest

from knowlm_ray.alpaca import RecordError
from knowlm_ray.ie.scorer import normalize, score_files, score_records

TYPES = ["PER", "LOC", "ORG", "MISC"]


def _random_spans(rng: random.Random, n: int, max_len: int = 4) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, type) spans over n tokens (adjacent same-type spans included)."""
    spans, i = [], 0
    while i < n:
        if rng.random() < 0.35:
            end = min(n, i + rng.randint(1, max_len))
            spans.append((i, end, rng.choice(TYPES)))
            i = end
        else:
            i += 1
    return spans


def _perturb(rng: random.Random, gold: list[tuple[int, int, str]], n: int) -> list[tuple[int, int, str]]:
    out = []
    for s, e, t in gold:
        r = rng.random()
        if r < 0.55:
            out.append((s, e, t))  # hit
        elif r < 0.65:
            out.append((s, e, rng.choice(TYPES)))  # maybe wrong type
        elif r < 0.8 and e - s > 1:
            out.append((s, e - 1, t))  # boundary error
        # else: dropped
    taken = {i for s, e, _ in out for i in range(s, e)}
    for s, e, t in _random_spans(rng, n, 2):  # spurious spans where nothing is predicted
        if not any(i in taken for i in range(s - 1, e + 1)) and rng.random() < 0.3:
            out.append((s, e, t))
            taken |= set(range(s, e))
    return sorted(out)


def _bio(spans, n):
    tags = ["O"] * n
    for s, e, t in spans:
        tags[s] = f"B-{t}"
        for i in range(s + 1, e):
            tags[i] = f"I-{t}"
    return tags


@pytest.mark.parametrize("seed", range(4))
def test_ner_agrees_exactly_with_seqeval(seed, tmp_path):
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    rng = random.Random(seed)
    y_true, y_pred, gold, pred_lines = [], [], [], []
    for d in range(60):
        n = rng.randint(1, 30)
        tokens = [f"w{d}_{i}" for i in range(n)]  # unique tokens: span text <-> position
        g = _random_spans(rng, n)
        p = _perturb(rng, g, n)
        text = " ".join(tokens)
        ents = lambda spans, tokens=tokens: [{"text": " ".join(tokens[s:e]), "type": t} for s, e, t in spans]  # noqa: E731
        gold.append({"id": f"d{d}", "text": text, "entities": ents(g)})
        y_true.append(_bio(g, n))
        fate = rng.random()
        if fate < 0.08:  # no prediction at all: every gold entity is a miss
            p = []
        elif fate < 0.14:  # an unreadable prediction line
            pred_lines.append('{"id": "d' + str(d) + '", "entities": [{"text": "w", "ty')
            p = []
        else:
            pred_lines.append(json.dumps({"id": f"d{d}", "text": text, "entities": ents(p)}))
        y_pred.append(_bio(p, n))
    rng.shuffle(pred_lines)
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(g) for g in gold), encoding="utf-8")
    (tmp_path / "p.jsonl").write_text("\n".join(pred_lines), encoding="utf-8")
    for match in ("set", "count"):  # no duplicates here, so both modes agree with seqeval
        ours = score_files("ner", tmp_path / "g.jsonl", tmp_path / "p.jsonl", match)
        assert ours["missing"] + ours["unparseable"] + ours["predicted"] == 60
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for mode in ({}, {"mode": "strict", "scheme": IOB2}):
                assert ours["micro"]["precision"] == precision_score(y_true, y_pred, **mode)
                assert ours["micro"]["recall"] == recall_score(y_true, y_pred, **mode)
                assert ours["micro"]["f1"] == f1_score(y_true, y_pred, **mode)
                report = classification_report(y_true, y_pred, output_dict=True, **mode)
                types = {k for k in report if not k.endswith(" avg")}
                assert set(ours["per_type"]) == types
                for t in types:
                    for m in ("precision", "recall", "f1"):
                        want = report[t]["f1-score" if m == "f1" else m]
                        assert ours["per_type"][t][m] == want, (t, m)
                    assert ours["per_type"][t]["gold"] == report[t]["support"]


def _re(h, r, t):
    return {"head": h, "relation": r, "tail": t}


def test_re_hand_computed():
    gold = [
        {"id": "1", "relations": [_re("鲁迅", "出生地", "浙江绍兴"), _re("呐喊", "作者", "鲁迅")]},
        {"id": "2", "relations": [_re("Marie Curie", "place of birth", "Warsaw")]},
        {"id": "3", "relations": [_re("A", "employer", "B")]},
    ]
    pred = [
        {"id": "1", "relations": [_re(" 鲁迅 ", "出生地", "浙江绍兴"), _re("鲁迅", "作者", "呐喊")]},
        {"id": "2", "relations": [_re("marie curie", "Place of Birth", "ＷＡＲＳＡＷ"), _re("x", "employer", "y")]},
    ]
    s = score_records("re", gold, pred)
    # tp 2 (normalised: trim, case-fold, full-width Latin), pred 4, gold 4; doc 3 missing
    assert (s["micro"]["tp"], s["micro"]["pred"], s["micro"]["gold"]) == (2, 4, 4)
    assert s["micro"]["precision"] == 0.5 and s["micro"]["recall"] == 0.5 and s["micro"]["f1"] == 0.5
    assert s["missing"] == 1 and s["predicted"] == 2
    per = s["per_type"]
    assert (per["出生地"]["tp"], per["作者"]["precision"], per["作者"]["recall"]) == (1, 0.0, 0.0)
    assert per["employer"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "pred": 1, "gold": 1}
    assert per["place of birth"]["f1"] == 1.0


def test_set_versus_count_matching():
    gold = [{"id": "1", "relations": [_re("a", "r", "b"), _re("a", "r", "b"), _re("c", "r", "d")]}]
    pred = [{"id": "1", "relations": [_re("a", "r", "b")] * 3}]
    s = score_records("re", gold, pred, "set")  # {ab, cd} vs {ab}
    assert (s["micro"]["tp"], s["micro"]["pred"], s["micro"]["gold"]) == (1, 1, 2)
    c = score_records("re", gold, pred, "count")  # ab×2, cd vs ab×3: one-to-one, 2 hits
    assert (c["micro"]["tp"], c["micro"]["pred"], c["micro"]["gold"]) == (2, 3, 3)
    assert c["micro"]["precision"] == 2 / 3 and c["micro"]["recall"] == 2 / 3


def _ev(t, trig, *args):
    return {"type": t, "trigger": trig, "arguments": [{"role": r, "text": x} for r, x in args]}


def test_ee_triggers_and_arguments_scored_separately():
    gold = [
        {
            "id": "1",
            "events": [
                _ev("获奖", "获得", ("获奖者", "屠呦呦"), ("奖项", "诺贝尔奖"), ("时间", "2015年")),
                _ev("毕业", "毕业", ("人物", "屠呦呦")),
            ],
        },
        {"id": "2", "events": [_ev("地震", "地震", ("震级", "5.2级"))]},
    ]
    pred = [
        {
            "id": "1",
            "events": [
                _ev("获奖", "获得", ("获奖者", "屠呦呦"), ("奖项", "诺贝尔生理学奖"), ("时间", "2015年")),
                _ev("毕业", "毕业于", ("人物", "屠呦呦")),
            ],
        },  # wrong trigger, right argument
        {"id": "2", "events": [_ev("地震", "发生", ("震级", "5.2级"), ("震中", "四川"))]},
    ]
    s = score_records("ee", gold, pred)
    t, a = s["trigger"]["micro"], s["argument"]["micro"]
    assert (t["tp"], t["pred"], t["gold"]) == (1, 3, 3)
    assert (a["tp"], a["pred"], a["gold"]) == (4, 6, 5)
    assert a["precision"] == 4 / 6 and a["recall"] == 4 / 5
    assert a["f1"] == 2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5)
    assert s["trigger"]["per_type"]["获奖"]["f1"] == 1.0 and s["trigger"]["per_type"]["地震"]["tp"] == 0
    assert s["argument"]["per_type"]["地震"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": 2 / 3,
        "tp": 1,
        "pred": 2,
        "gold": 1,
    }


def test_unreadable_predictions_are_counted_and_score_as_misses():
    gold = [{"id": str(i), "text": f"t{i}", "entities": [{"text": f"t{i}", "type": "X"}]} for i in range(6)]
    good = {"text": "t0", "entities": [{"text": "t0", "type": "x"}]}  # joined on text; type case-folded
    lines = [
        json.dumps(good),
        "not json",
        '{"id": "1", "entities": "oops"}',
        "[1, 2]",
        json.dumps({"id": "2", "error": "generation failed"}),
        json.dumps({"id": "3", "entities": [{"text": "t3"}, {"text": "t3", "type": "X"}]}),
        json.dumps({"id": "3", "entities": []}),
        json.dumps({"id": "99", "entities": []}),
    ]
    s = score_records("ner", gold, lines)
    assert (s["micro"]["tp"], s["micro"]["pred"], s["micro"]["gold"]) == (2, 2, 6)
    assert s["unparseable"] == 4 and s["duplicates"] == 1 and s["extra"] == 1 and s["invalid_items"] == 1
    assert s["predicted"] == 2 and s["missing"] == 2  # ids 4, 5; "not json" and [1, 2] join nothing
    assert list(s["per_type"]) == ["X"]  # the gold spelling


def test_normalize():
    assert normalize(" Ｍarie　CURIE ") == "marie curie"
    assert normalize("ΑΒΓ") == "ΑΒΓ"  # only Latin is case-folded
    assert normalize("（鲁迅）") == "(鲁迅)"


def test_gold_errors_name_file_and_line(tmp_path):
    g = tmp_path / "g.jsonl"
    g.write_text('{"id": "1", "entities": []}\n{"id": "1", "entities": []}\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"g.jsonl:2: duplicate id"):
        score_files("ner", g, g)
    g.write_text('{"id": "1", "entities": [{"text": "a"}]}\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"g.jsonl:1: entities\[0\]: 'type'"):
        score_files("ner", g, g)
    with pytest.raises(RecordError, match="not found"):
        score_files("ner", tmp_path / "nope.jsonl", g)


def test_cli_ie_score(tmp_path, capsys):
    from knowlm_ray.cli import main

    g, p = tmp_path / "g.jsonl", tmp_path / "p.jsonl"
    g.write_text(json.dumps({"id": "1", "relations": [_re("a", "r", "b")]}) + "\n", encoding="utf-8")
    p.write_text(
        json.dumps({"id": "1", "relations": [_re("A", "r", "b"), _re("a", "r", "c")]}) + "\n", encoding="utf-8"
    )
    main(
        [
            "ie-score",
            "--task",
            "re",
            "--gold",
            str(g),
            "--pred",
            str(p),
            "--match",
            "count",
            "--out",
            str(tmp_path / "s.json"),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["micro"]["precision"] == 0.5 and out["match"] == "count"
    assert json.loads((tmp_path / "s.json").read_text()) == out
    with pytest.raises(SystemExit) as exc:
        main(["ie-score", "--task", "re", "--gold", str(tmp_path / "x"), "--pred", str(p)])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err
