"""``jobs/generate_instructions.py``: new alpaca records from an OpenAI-compatible endpoint.

Three generators, as EasyInstruct has them (prompts in ``generate_prompts``):

- ``self_instruct``: task i shows ``num_prompt_instructions`` seed instructions (sampled with
  ``seed`` and i) and asks for more; a new one is kept when its ROUGE-L against every seed and
  every instruction kept so far is at most ``rouge_threshold``, then (``answer``) asked for its
  output.
- ``evol_instruct``: task i rewrites input instruction i in one of ``evolutions`` (in-breadth or
  in-depth, drawn with ``seed`` and i), then asks for the new instruction's output.
- ``backtranslation``: task i asks for the instruction that input text i answers; the text is the
  output. With ``min_score`` the endpoint then rates the pair 1-5 (Humpback's self-curation) and
  pairs rated below it are dropped.

Output, under ``out_dir``: ``generated.jsonl`` ({instruction, input, output} plus provenance:
``id``, ``generator``, ``task_id``, ``seed_tasks``, ``model``, ``endpoint``, ``request_id``,
``attempts`` and, for answered instructions, ``answer_request_id`` / ``answer_attempts``),
``tasks.jsonl`` (the ledger, see ``generate_output``), ``quarantine.jsonl`` (input lines that could
not be read) and ``manifest.json`` (counts). A re-run continues where the last one stopped.

One process with asyncio, not Ray: the work is waiting on HTTP, which one event loop does for
hundreds of requests at once; the compute is the endpoint's (scale it with Serve replicas), and
one writer keeps the ledger's exactly-once order without coordinating workers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_ray.atomic import atomic_open, write_json_atomic
from knowlm_ray.config import GenerateConfig
from knowlm_ray.curate.generate_client import Endpoint, RequestFailed
from knowlm_ray.curate.generate_output import Ledger
from knowlm_ray.curate.generate_prompts import (
    backtranslation_prompt,
    evol_prompt,
    parse_backtranslation,
    parse_evol,
    parse_score,
    parse_self_instruct,
    self_curation_prompt,
    self_instruct_prompt,
)
from knowlm_ray.curate.generate_rouge import RougePool
from knowlm_ray.errors import InputError, MissingPathError

TAG = "[generate_instructions]"
PROGRESS_EVERY_S = 10.0
# EasyInstruct's sampling per generator (SelfInstructGenerator, EvolInstructGenerator,
# BacktranslationGenerator); temperature / top_p in the config override them.
SAMPLING = {
    "self_instruct": {"temperature": 0.5, "top_p": 0.5, "frequency_penalty": 0, "presence_penalty": 2},
    "evol_instruct": {"temperature": 1.0, "top_p": 0.95, "frequency_penalty": 0, "presence_penalty": 0},
    "backtranslation": {"temperature": 0.0, "top_p": 1.0, "frequency_penalty": 0, "presence_penalty": 0},
}
ANSWER_SAMPLING = {"temperature": 0.0}  # an instruction's output: greedy


class StateMismatch(InputError):
    """out_dir holds a run whose tasks differ from this config's."""


# ---------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    items: list[dict] = field(default_factory=list)  # {"id", "instruction" | "text", "input"}
    read: int = 0
    quarantine: list[dict] = field(default_factory=list)
    skipped_long: int = 0


def _lines(path: Path):
    """(line number, parsed JSON or the error) of a .jsonl file or of the items of a .json list."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path}: not a JSON file ({exc}); give a JSON list or a .jsonl file") from exc
        if not isinstance(data, list):
            raise InputError(f"{path}: a .json input must hold a list of records")
        yield from ((i, obj, json.dumps(obj, ensure_ascii=False)) for i, obj in enumerate(data, 1))
        return
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            yield i, json.loads(raw), raw
        except ValueError as exc:
            yield i, exc, raw


def read_inputs(cfg: GenerateConfig) -> Inputs:
    """Seed tasks / instructions (alpaca-style: an ``instruction``) or texts (the first of
    ``text_field``); anything else goes to quarantine, counted."""
    out = Inputs()
    want_text = cfg.generator == "backtranslation"
    for name in cfg.inputs:
        path = Path(name)
        if not path.is_file():
            raise MissingPathError(f"inputs: {path} is not a file")
        for line, obj, raw in _lines(path):
            out.read += 1
            where = {"file": str(path), "line": line, "raw": raw[:2000]}
            if isinstance(obj, Exception):
                out.quarantine.append({**where, "reason": f"not JSON: {obj}"})
                continue
            if not isinstance(obj, dict):
                out.quarantine.append({**where, "reason": "not a JSON object"})
                continue
            rid = obj.get("id")
            rid = str(rid) if isinstance(rid, str | int) else f"{path.stem}:{line}"
            if want_text:
                text = next((obj[f] for f in cfg.text_field if isinstance(obj.get(f), str) and obj[f].strip()), None)
                if text is None:
                    out.quarantine.append({**where, "reason": f"no text in any of {cfg.text_field}"})
                elif len(text) > cfg.max_chars:
                    out.skipped_long += 1
                else:
                    out.items.append({"id": rid, "text": text})
                continue
            inst = obj.get("instruction")
            if not isinstance(inst, str) or not inst.strip():
                out.quarantine.append({**where, "reason": "no instruction string"})
                continue
            extra = obj.get("input") if isinstance(obj.get("input"), str) else ""
            out.items.append({"id": rid, "instruction": inst.strip(), "input": extra})
    return out


# ---------------------------------------------------------------------------- tasks
def plan_tasks(cfg: GenerateConfig, inputs: Inputs) -> list[dict]:
    """The run's tasks, each ``{"task_id", "prompt", "seed_tasks", ...}``: a pure function of the
    config's task keys and the inputs, so a re-run finds the same ids."""
    items = inputs.items
    if cfg.generator == "self_instruct":
        if not items:
            raise InputError(f"inputs: no seed instruction in {', '.join(cfg.inputs)}")
        k = min(cfg.num_prompt_instructions, len(items))
        tasks = []
        for i in range(cfg.num_tasks):
            shown = random.Random(f"{cfg.seed}:self_instruct:{i}").sample(items, k)
            tasks.append(
                {
                    "task_id": f"self_instruct-{i:06d}",
                    "prompt": self_instruct_prompt([s["instruction"] for s in shown]),
                    "seed_tasks": [s["id"] for s in shown],
                }
            )
        return tasks
    chosen = items[: cfg.num_tasks] if cfg.num_tasks else items
    tasks = []
    for i, item in enumerate(chosen):
        tid = f"{cfg.generator}-{i:06d}"
        if cfg.generator == "evol_instruct":
            kind = random.Random(f"{cfg.seed}:{tid}").choice(cfg.evolutions)
            given = item["instruction"] + (f"\n{item['input']}" if item["input"].strip() else "")
            tasks.append(
                {"task_id": tid, "prompt": evol_prompt(kind, given), "seed_tasks": [item["id"]], "evolution": kind}
            )
            tasks[-1]["original"] = given
        else:
            tasks.append({"task_id": tid, "prompt": backtranslation_prompt(item["text"]), "seed_tasks": [item["id"]]})
            tasks[-1]["text"] = item["text"]
    return tasks


def _fingerprint(tasks: list[dict]) -> str:
    h = hashlib.sha256()
    for t in tasks:
        h.update(f"{t['task_id']}\0{t['prompt']}\0".encode())
    return h.hexdigest()


def check_state(cfg: GenerateConfig, tasks: list[dict]) -> None:
    """The first run writes ``state.json``; a re-run must plan the same tasks (ids and prompts) and
    keep what decides which answers become records (else one file would mix two rules)."""
    path = Path(cfg.out_dir) / "state.json"
    state = {
        "generator": cfg.generator,
        "tasks": len(tasks),
        "tasks_sha256": _fingerprint(tasks),
        "rules": {"rouge_threshold": cfg.rouge_threshold, "answer": cfg.answer, "min_score": cfg.min_score},
    }
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if {k: v for k, v in old.items() if k != "rules"} != {k: v for k, v in state.items() if k != "rules"}:
            raise StateMismatch(
                f"{cfg.out_dir} holds a {old.get('generator')} run of {old.get('tasks')} other tasks "
                f"(inputs, generator, num_tasks, num_prompt_instructions, evolutions, text_field, max_chars "
                f"or seed changed): give a new out_dir, or delete it to start over"
            )
        if old.get("rules") != state["rules"]:
            raise StateMismatch(
                f"{cfg.out_dir} was generated with {old.get('rules')}, this config has {state['rules']}: "
                f"keep those keys to continue it, or give a new out_dir"
            )
    else:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(state, path)


# ---------------------------------------------------------------------------- one task
class Generator:
    """Runs tasks against the endpoint and commits each to the ledger."""

    def __init__(self, cfg: GenerateConfig, ep: Endpoint, ledger: Ledger, pool: RougePool | None):
        self.cfg, self.ep, self.ledger, self.pool = cfg, ep, ledger, pool
        sampling = dict(SAMPLING[cfg.generator])
        if cfg.temperature is not None:
            sampling["temperature"] = cfg.temperature
        if cfg.top_p is not None:
            sampling["top_p"] = cfg.top_p
        self.sampling = sampling

    def _record(self, task: dict, k: int, instruction: str, output: str, ans, **extra) -> dict:
        return {
            "instruction": instruction,
            "input": "",
            "output": output,
            "id": f"{task['task_id']}-{k}",
            "generator": self.cfg.generator,
            "task_id": task["task_id"],
            "seed_tasks": task["seed_tasks"],
            "model": self.ep.model,
            "endpoint": self.ep.base_url,
            "request_id": ans.request_id,
            "attempts": ans.attempts,
            **extra,
        }

    async def _answer(self, instruction: str) -> tuple[str | None, dict]:
        if not self.cfg.answer:
            return "", {}
        a = await self.ep.ask(instruction, self.cfg.answer_max_tokens, **ANSWER_SAMPLING)
        prov = {"answer_request_id": a.request_id, "answer_attempts": a.attempts}
        return (None, prov) if a.malformed else (a.text.strip(), prov)

    async def _rate(self, instruction: str, text: str, drop) -> dict | None:
        """Backtranslation's self-curation (``min_score``): the record's extra fields, or None when
        the pair is dropped."""
        if self.cfg.min_score is None:
            return {}
        a = await self.ep.ask(self_curation_prompt(instruction, text), self.cfg.max_tokens, **ANSWER_SAMPLING)
        score = None if a.malformed else parse_score(a.text)
        if a.malformed or score is None:
            drop("score_malformed" if a.malformed else "no_score", instruction)
            return None
        if score < self.cfg.min_score:
            drop("low_score", instruction, score=score)
            return None
        return {"score": score, "score_request_id": a.request_id, "score_attempts": a.attempts}

    async def run_task(self, task: dict) -> tuple[list[dict], dict]:
        entry: dict[str, Any] = {"task_id": task["task_id"], "status": "answered", "records": 0, "candidates": 0}
        dropped: dict[str, int] = {}
        notes: list[dict] = []
        reserved: list[str] = []  # instructions this task added to the ROUGE pool

        def drop(why: str, instruction: str | None = None, **info) -> None:
            dropped[why] = dropped.get(why, 0) + 1
            if instruction is not None:
                notes.append({"instruction": instruction, "reason": why, **info})

        try:
            ans = await self.ep.ask(task["prompt"], self.cfg.max_tokens, **self.sampling)
            entry.update(request_id=ans.request_id, attempts=ans.attempts)
            if ans.malformed:
                entry.update(status="malformed", reason=ans.malformed)
                return [], entry
            records: list[dict] = []
            if self.cfg.generator == "self_instruct":
                cands, filtered = parse_self_instruct(ans.text, truncated=ans.finish_reason == "length")
                entry["candidates"] = len(cands) + sum(filtered.values())
                for why, n in filtered.items():
                    dropped[why] = dropped.get(why, 0) + n
                for inst in cands:
                    ok, score, who = self.pool.novel(inst)
                    if not ok:
                        drop("rouge", inst, rouge_l=round(score, 4), most_similar=who)
                        continue
                    reserved.append(inst)
                    output, prov = await self._answer(inst)
                    if output is None:
                        drop("answer_malformed", inst)
                        self.pool.remove(inst)  # the pool holds what generated.jsonl holds
                        reserved.remove(inst)
                        continue
                    rec = self._record(task, len(records), inst, output, ans, rouge_l=round(score, 4), **prov)
                    records.append(rec)
            else:
                entry["candidates"] = 1
                if self.cfg.generator == "evol_instruct":
                    inst, why = parse_evol(ans.text, task["original"])
                else:
                    inst, why = parse_backtranslation(ans.text)
                if why:
                    drop(why, ans.text.strip()[:500] or None)
                elif self.cfg.generator == "evol_instruct":
                    output, prov = await self._answer(inst)
                    if output is None:
                        drop("answer_malformed", inst)
                    else:
                        extra = {"evolution": task["evolution"], "parent": task["original"], **prov}
                        records.append(self._record(task, 0, inst, output, ans, **extra))
                else:
                    extra = await self._rate(inst, task["text"], drop)
                    if extra is not None:
                        records.append(self._record(task, 0, inst, task["text"], ans, **extra))
            entry.update(records=len(records), dropped=dropped, dropped_instructions=notes)
            return records, entry
        except RequestFailed as exc:
            if self.pool is not None:
                for inst in reserved:
                    self.pool.remove(inst)
            return [], {
                "task_id": task["task_id"],
                "status": "failed",
                "error": str(exc),
                "attempts": entry.get("attempts", 0) + exc.attempts,
            }


# ---------------------------------------------------------------------------- the run
def manifest_of(cfg: GenerateConfig, tasks: list[dict], inputs: Inputs, ledger: Ledger, ep: Endpoint) -> dict:
    entries = [ledger.entries[t["task_id"]] for t in tasks if t["task_id"] in ledger.entries]
    status = {s: sum(e["status"] == s for e in entries) for s in ("answered", "malformed", "failed")}
    dropped: dict[str, int] = {}
    for e in entries:
        for why, n in (e.get("dropped") or {}).items():
            dropped[why] = dropped.get(why, 0) + n
    return {
        "generator": cfg.generator,
        "model": ep.model,
        "endpoint": ep.base_url,
        "api": cfg.api,
        "inputs": {
            "read": inputs.read,
            "malformed": len(inputs.quarantine),
            "skipped_long": inputs.skipped_long,
            "used": len(inputs.items),
        },
        # planned = asked + pending; asked = answered + malformed + failed (the latest try of each)
        "tasks": {"planned": len(tasks), "asked": len(entries), **status, "pending": len(tasks) - len(entries)},
        # candidates = kept + every dropped reason
        "instructions": {
            "candidates": sum(e.get("candidates", 0) for e in entries),
            "kept": len(ledger.records),
            "dropped": dict(sorted(dropped.items())),
        },
        # every ledger line, earlier runs' failed tries included
        "requests": {"task_tries": len(ledger.history), "http_this_run": ep.sent, "retried_this_run": ep.retried},
        "repaired": ledger.repaired,
        "files": {"records": "generated.jsonl", "ledger": "tasks.jsonl", "quarantine": "quarantine.jsonl"},
        "config": cfg.model_dump(exclude={"api_key"}),
    }


def _say(msg: str) -> None:
    print(f"{TAG} {msg}", flush=True)


async def _run(cfg: GenerateConfig, tasks: list[dict], inputs: Inputs, ledger: Ledger, api_key: str | None) -> dict:
    ep = Endpoint(
        cfg.base_url,
        cfg.api,
        api_key,
        model=cfg.model,
        concurrency=cfg.concurrency,
        max_retries=cfg.max_retries,
        retry_backoff_s=cfg.retry_backoff_s,
        retry_max_backoff_s=cfg.retry_max_backoff_s,
        timeout_s=cfg.timeout_s,
        seed=cfg.seed,
    )
    pool = None
    if cfg.generator == "self_instruct":
        pool = RougePool([s["instruction"] for s in inputs.items], cfg.rouge_threshold)
        for r in ledger.records:
            pool.add(r["instruction"])
    todo = [t for t in tasks if not ledger.finished(t["task_id"])]
    done_before = len(tasks) - len(todo)
    async with ep:
        model = await ep.resolve_model()
        _say(
            f"{cfg.generator}: {len(tasks)} tasks, {done_before} finished before, {len(todo)} to ask "
            f"{model} at {cfg.base_url} ({cfg.api}, {cfg.concurrency} at a time)"
        )
        gen = Generator(cfg, ep, ledger, pool)
        queue: asyncio.Queue = asyncio.Queue()
        for t in todo:
            queue.put_nowait(t)
        counts = {"answered": 0, "malformed": 0, "failed": 0, "records": 0}
        last = time.monotonic()

        async def worker() -> None:
            nonlocal last
            while not queue.empty():
                task = queue.get_nowait()
                records, entry = await gen.run_task(task)
                ledger.commit(records, entry)  # no await between the two appends: one writer
                counts[entry["status"]] += 1
                counts["records"] += len(records)
                if time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    n = counts["answered"] + counts["malformed"] + counts["failed"]
                    _say(
                        f"{n}/{len(todo)} tasks: {counts['answered']} answered, {counts['malformed']} "
                        f"malformed, {counts['failed']} failed; {counts['records']} records"
                    )

        workers = [asyncio.create_task(worker()) for _ in range(min(cfg.concurrency, len(todo)) or 1)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
        return manifest_of(cfg, tasks, inputs, ledger, ep)


def run(cfg: GenerateConfig) -> dict:
    """Plan, resume, ask, write the manifest; returns it."""
    inputs = read_inputs(cfg)
    tasks = plan_tasks(cfg, inputs)
    check_state(cfg, tasks)
    out = Path(cfg.out_dir)
    with atomic_open(out / "quarantine.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in inputs.quarantine)
    api_key = cfg.api_key or os.environ.get(cfg.api_key_env) or None
    ledger = Ledger(out).open()
    if any(ledger.repaired.values()):
        _say(f"repaired a torn end: {ledger.repaired}")
    try:
        manifest = asyncio.run(_run(cfg, tasks, inputs, ledger, api_key))
    finally:
        ledger.close()
    write_json_atomic(manifest, out / "manifest.json")
    return manifest
