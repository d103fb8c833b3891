"""IEPile's scoring rules on cases computed by hand."""

from __future__ import annotations

import json

import pytest

from knowlm_ray.ie.iepile_score import IEPileFileError, score_iepile


def _write(tmp_path, rows):
    p = tmp_path / "result.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def _row(id_, label, output, source="s1"):
    return {
        "id": id_,
        "source": source,
        "task": "NER",
        "instruction": json.dumps({"input": "t"}),
        "label": json.dumps(label, ensure_ascii=False),
        "output": output,
    }


NER_GOLD = [{"entity": "鲁迅", "entity_type": "人物"}, {"entity": "绍兴", "entity_type": "地理位置"}]


def test_ner_batches_merge_per_id_and_errors_count(tmp_path):
    rows = [
        # text 1 asked in two label batches: both answers count for it
        _row("1", NER_GOLD, '{"人物": ["鲁迅"], "组织机构": []}'),
        _row("1", NER_GOLD, '{"地理位置": ["绍兴", "浙江"]}'),
        # text 2: unreadable answer -> one error, its gold all missed
        _row("2", [{"entity": "Apple", "entity_type": "组织机构"}], '{"组织机构": ["App', source="s2"),
    ]
    got = score_iepile(_write(tmp_path, rows), "ner")
    # tp 2, predicted 3, gold 3: P 66.67, R 66.67
    assert got["total"] == {"错误数": 1, "P": 66.67, "R": 66.67, "F1": 66.67}
    assert got["s1"] == {"错误数": 0, "P": 66.67, "R": 100.0, "F1": 80.0}
    assert got["s2"] == {"错误数": 1, "P": 0.0, "R": 0.0, "F1": 0.0}
    assert list(got) == ["total", "s1", "s2"]


def test_exact_case_sensitive_and_normal_vs_set(tmp_path):
    gold = [{"entity": "apple", "entity_type": "ORG"}]
    rows = [_row("1", gold, '{"ORG": ["Apple", "apple", "apple"]}')]
    p = _write(tmp_path, rows)
    # normal (multiset): 1 hit of 3 predictions; set: 1 of {Apple, apple}
    assert score_iepile(p, "ner", "normal")["total"] == {"错误数": 0, "P": 33.33, "R": 100.0, "F1": 50.0}
    assert score_iepile(p, "ner", "set")["total"] == {"错误数": 0, "P": 50.0, "R": 100.0, "F1": 66.67}


def test_re(tmp_path):
    gold = [
        {"head": "鲁迅", "relation": "出生地", "tail": "绍兴"},
        {"head": "鲁迅", "relation": "国籍", "tail": "中国"},
    ]
    rows = [
        _row(
            "1",
            gold,
            '{"出生地": [{"subject": "鲁迅", "object": "绍兴"}], "国籍": [{"subject": "鲁迅", "object": "中华"}]}',
        )
    ]
    assert score_iepile(_write(tmp_path, rows), "re")["total"] == {"错误数": 0, "P": 50.0, "R": 50.0, "F1": 50.0}


def test_ee_events_and_arguments_separately(tmp_path):
    gold = [
        {
            "event_type": "地震",
            "event_trigger": "地震",
            "arguments": [{"argument": "5级", "role": "震级"}, {"argument": "四川", "role": "地点"}],
        }
    ]
    answer = '{"地震": [{"trigger": "地震", "arguments": {"震级": "5级", "地点": "NAN", "时间": "昨天"}}], "火灾": []}'
    got = score_iepile(_write(tmp_path, [_row("1", gold, answer)]), "ee")["total"]
    # events: 1/1; arguments: predicted (震级 5级), (时间 昨天); gold 2; 1 hit
    assert got == {
        "错误数": 0,
        "event_P": 100.0,
        "event_R": 100.0,
        "event_F1": 100.0,
        "argument_P": 50.0,
        "argument_R": 50.0,
        "argument_F1": 50.0,
    }


def test_bad_lines_name_the_line(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(_row("1", NER_GOLD, "{}")) + "\nnot json\n", encoding="utf-8")
    with pytest.raises(IEPileFileError, match=r"r\.jsonl:2"):
        score_iepile(p, "ner")
    with pytest.raises(IEPileFileError, match="not found"):
        score_iepile(tmp_path / "missing.jsonl", "ner")


def test_knowlm_ie_score_iepile(tmp_path, capsys):
    from knowlm_ray.cli import main as knowlm

    p = _write(tmp_path, [_row("1", NER_GOLD, '{"人物": ["鲁迅"], "地理位置": ["绍兴"]}')])
    knowlm(["ie-score", "--task", "ner", "--iepile", str(p), "--out", str(tmp_path / "s.json")])
    got = json.loads(capsys.readouterr().out)
    assert got["total"] == {"错误数": 0, "P": 100.0, "R": 100.0, "F1": 100.0}
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == got
    for argv, named in [
        (["--iepile", str(p), "--match", "count"], "--match count"),
        (["--iepile", str(p), "--gold", str(p)], "without --gold"),
        (["--gold", str(p)], "--iepile RESULTS"),
        (["--iepile", str(tmp_path / "nope.jsonl")], "not found"),
    ]:
        with pytest.raises(SystemExit) as exc:
            knowlm(["ie-score", "--task", "ner", *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err and err.count("\n") == 1
