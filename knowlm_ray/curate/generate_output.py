"""The resumable output of instruction generation: records and a ledger, both append-only.

``generated.jsonl`` gets a finished task's records, then ``tasks.jsonl`` one line saying the task
is finished (its status, counts and the instructions it dropped). One writer appends both, in that
order, and flushes each, so a kill leaves at most one torn line at the end of either file and, in
``generated.jsonl``, records of one task the ledger does not list yet. ``Ledger.open`` cuts both
files back to what the ledger vouches for; a re-run then asks only the tasks it does not list as
answered or malformed (a failed task is asked again), so every record appears exactly once.
These two files are logs appended to as answers arrive, which is why they are not written under
a temporary name; the manifest is (``knowlm_ray.atomic``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RECORDS = "generated.jsonl"
LEDGER = "tasks.jsonl"
FINISHED = ("answered", "malformed")  # a task with one of these statuses is never asked again


def _good_prefix(path: Path, keep) -> tuple[list[dict], int]:
    """The leading whole lines of ``path`` that parse as JSON objects and that ``keep`` accepts,
    and their length in bytes; the first line that does not ends the prefix."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    objs, end = [], 0
    while end < len(data):
        nl = data.find(b"\n", end)
        if nl < 0:
            break  # torn: written without its newline
        try:
            obj = json.loads(data[end:nl])
        except ValueError:
            break
        if not isinstance(obj, dict) or not keep(obj):
            break
        objs.append(obj)
        end = nl + 1
    return objs, end


def _cut(path: Path, size: int) -> int:
    """Truncate ``path`` to ``size`` bytes; the bytes removed."""
    if not path.exists():
        return 0
    extra = path.stat().st_size - size
    if extra:
        os.truncate(path, size)
    return extra


class Ledger:
    """Open (repairing), then ``commit(records, entry)`` once per finished task."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.records_path = self.dir / RECORDS
        self.ledger_path = self.dir / LEDGER
        self.entries: dict[str, dict] = {}  # task id -> its latest ledger line
        self.history: list[dict] = []  # every ledger line (the retries of failed tasks too)
        self.records: list[dict] = []
        self.repaired = {"ledger_bytes": 0, "records_bytes": 0}
        self._rec = self._led = None

    def open(self) -> Ledger:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.history, size = _good_prefix(self.ledger_path, lambda o: isinstance(o.get("task_id"), str))
        self.repaired["ledger_bytes"] = _cut(self.ledger_path, size)
        for e in self.history:
            self.entries[e["task_id"]] = e
        vouched = {t for t, e in self.entries.items() if e.get("status") in FINISHED}
        self.records, size = _good_prefix(self.records_path, lambda o: o.get("task_id") in vouched)
        self.repaired["records_bytes"] = _cut(self.records_path, size)
        self._rec = self.records_path.open("a", encoding="utf-8")
        self._led = self.ledger_path.open("a", encoding="utf-8")
        return self

    def finished(self, task_id: str) -> bool:
        e = self.entries.get(task_id)
        return e is not None and e.get("status") in FINISHED

    def commit(self, records: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        if records:
            self._rec.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self._rec.flush()
        self._led.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._led.flush()
        self.records += records
        self.history.append(entry)
        self.entries[entry["task_id"]] = entry

    def close(self) -> None:
        for f in (self._rec, self._led):
            if f is not None:
                f.close()
