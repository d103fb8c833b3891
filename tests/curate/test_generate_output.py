"""The ledger: records then a ledger line per task; a kill's torn or unvouched tail is cut."""

from __future__ import annotations

import json

from knowlm_ray.curate.generate_output import Ledger


def _rec(task: str, k: int) -> dict:
    return {"instruction": f"{task} {k}", "input": "", "output": "o", "id": f"{task}-{k}", "task_id": task}


def test_reopen_cuts_torn_and_unvouched_tails_and_keeps_failed_tasks_open(tmp_path):
    led = Ledger(tmp_path).open()
    led.commit([_rec("t0", 0), _rec("t0", 1)], {"task_id": "t0", "status": "answered", "records": 2})
    led.commit([], {"task_id": "t1", "status": "failed", "error": "HTTP 500"})
    led.commit([], {"task_id": "t2", "status": "malformed", "records": 0})
    led.close()
    good_records = (tmp_path / "generated.jsonl").read_bytes()
    good_ledger = (tmp_path / "tasks.jsonl").read_bytes()
    with (tmp_path / "generated.jsonl").open("a") as f:  # t3's records, killed before its ledger line
        f.write(json.dumps(_rec("t3", 0)) + "\n" + '{"instruction": "t3 1", "inp')
    with (tmp_path / "tasks.jsonl").open("a") as f:
        f.write('{"task_id": "t3", "sta')

    led = Ledger(tmp_path).open()
    assert (tmp_path / "generated.jsonl").read_bytes() == good_records
    assert (tmp_path / "tasks.jsonl").read_bytes() == good_ledger
    assert led.repaired["ledger_bytes"] == len('{"task_id": "t3", "sta') and led.repaired["records_bytes"] > 0
    assert [led.finished(t) for t in ("t0", "t1", "t2", "t3")] == [True, False, True, False]
    assert [r["id"] for r in led.records] == ["t0-0", "t0-1"]
    led.commit([_rec("t1", 0)], {"task_id": "t1", "status": "answered", "records": 1})
    led.close()
    led = Ledger(tmp_path).open()
    assert led.finished("t1") and len(led.history) == 4 and [r["id"] for r in led.records][-1] == "t1-0"
    led.close()
