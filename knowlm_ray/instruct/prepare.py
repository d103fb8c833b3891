"""Instruction data -> tokenised, prompt-masked Arrow shards with a train / validation split.

Input: alpaca ``.json`` / ``.jsonl`` files (or directories of them) and / or IE records + a label
schema, which are first built into instructions with ``kg2instruct.build_instructions``. IEPile
train / test records (``instruction`` a OneKE instruction JSON string, ``output`` or ``label``) in
the same files are recognised and trained in OneKE's own prompt (``knowlm_ray.instruct.iepile``).
Output (what the LoRA trainer reads)::

    out_dir/train/part-NNNNN.arrow        Arrow IPC *file* format: input_ids list<int32>,
    out_dir/validation/part-NNNNN.arrow   labels list<int32> (-100 over the prompt), id, task
    out_dir/quarantine/malformed.jsonl    {"file", "line", "reason", "record"} per bad input
    out_dir/manifest.json                 splits, dropped counts, shards (sha256), config

* Malformed input records (bad JSON, missing fields, IE spans not in the text, labels outside
  the schema, duplicate IE ids) are quarantined with ``file:line`` and counted, never fatal.
* Records with a blank response are dropped (``empty_response``); so are rows whose response
  the ``cutoff_len`` cut away entirely (``cut_off``: nothing left to learn).
* The split is by a seeded hash of the *source record* id (an alpaca record's ``id`` field, an
  IE record's id, else a hash of its text), so all schema batches of one IE record land on the
  same side, and the split does not depend on input order. Records are taken into validation
  in hash order until it holds ``val_set_size`` rows (it may exceed that by less than one
  record's batches).
* Tokenisation runs in a Ray Data ``map_batches`` actor pool (one tokenizer per actor). Rows are
  sorted by ``(split, id)`` and cut into files of exactly ``rows_per_shard`` rows, one Ray task
  per file (``knowlm_ray.corpus.shards``'s scheme), so the same input + config gives
  byte-identical files. Everything is written to a temp dir beside ``out_dir`` and renamed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from knowlm_ray.alpaca import (
    IGNORE_INDEX,
    RecordError,
    alpaca_files,
    is_iepile_record,
    tokenize_record,
    validate_record,
)
from knowlm_ray.atomic import atomic_dir, atomic_path
from knowlm_ray.corpus.shards import _sha256, gather, plan_files, table_rows
from knowlm_ray.errors import MissingPathError
from knowlm_ray.instruct.iepile import iepile_row

INSTRUCTION_SCHEMA = pa.schema(
    [("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())), ("id", pa.string()), ("task", pa.string())]
)
SPLITS = ("train", "validation")
_TOKENIZED = pa.schema([*INSTRUCTION_SCHEMA, ("split", pa.string())])


# ------------------------------------------------------------------------------- reading
def _printable(text: str) -> str:
    """``text`` as valid UTF-8 (bytes that were not, and lone surrogates, as backslash escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _quarantine(bad: list[dict], path: Path | str, line: int, reason: str, raw: Any) -> None:
    try:
        text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
    except (RecursionError, ValueError, TypeError):
        text = f"<a {type(raw).__name__} that cannot be shown>"
    bad.append({"file": str(path), "line": line, "reason": reason, "record": _printable(text[:2000])})


def utf8_problem(obj: Any) -> str | None:
    """Why the strings of a parsed record cannot be written as UTF-8 (a lone surrogate: from a
    ``\\ud800`` escape, or an invalid byte of a JSON list file), or None."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8 (an unpaired surrogate or an invalid byte)"
    except (RecursionError, ValueError):
        return "nested too deeply"
    return None


def _skip_json_value(text: str, i: int) -> int:
    """The index after the JSON value starting at ``i``, found by bracket counting (used when the
    parser gave up on it: nested deeper than Python's recursion limit)."""
    depth, in_str, esc = 0, False, False
    for j in range(i, len(text)):
        c = text[j]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def _iter_json_list(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """``(line, object, None)`` for the elements of a JSON list, ``(line, raw, reason)`` for one
    that cannot be read; a syntax error ends the list, an element nested too deeply is skipped."""
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    line, counted = 1, 0  # newlines counted up to `counted`: linear in the file, not quadratic
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        line += text.count("\n", counted, i)
        counted = i
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            yield line, "", f"invalid JSON: {exc.msg} (the rest of the list is skipped)"
            return
        except RecursionError:
            end = _skip_json_value(text, i)
            yield line, text[i:end], "invalid JSON: nested too deeply"
            i = end
            continue
        yield line, obj, None


def _iter_json_lines(data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    """``(line, object, None)`` per JSON line, ``(line, raw text, reason)`` per unreadable one:
    each line is decoded on its own, so a bad byte costs only its line."""
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield n, raw.decode("utf-8", "backslashreplace").rstrip("\r"), f"not valid UTF-8 (byte {exc.start})"
            continue
        try:
            yield n, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield n, line, f"invalid JSON: {exc.msg}"
        except RecursionError:
            yield n, line, "invalid JSON: nested too deeply"


def _record(obj: Any, where: str) -> dict:
    """The training row of one parsed record; RecordError says why it is not one."""
    problem = utf8_problem(obj)
    if problem:
        raise RecordError(f"{where}: {problem}")
    try:
        rec = iepile_row(obj, where) if is_iepile_record(obj) else validate_record(obj, where)
    except RecordError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:  # odd shapes inside
        raise RecordError(f"{where}: unusable record ({type(exc).__name__}: {exc})") from None
    if rec["output"].strip() == "":
        rec["empty"] = True
    rid, task = obj.get("id"), obj.get("task")
    rec["group"] = str(rid) if isinstance(rid, (str, int)) and str(rid) else _content_id(rec)
    rec["task"] = task.lower() if isinstance(task, str) and task else "general"
    return rec


def read_alpaca(path: str | Path, bad: list[dict]) -> list[dict]:
    """Alpaca records (+ ``group`` = the source record id, ``task``) of a file or directory;
    malformed ones (invalid UTF-8 or JSON, nesting deeper than the parser goes, wrong types) go
    to ``bad`` with their file and line."""
    out = []
    for f in alpaca_files(path):
        data = f.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
        if data.lstrip().startswith(b"["):
            # one document: bad bytes become lone surrogates, found per element by utf8_problem
            items: Iterator = _iter_json_list(data.decode("utf-8", "surrogateescape"))
        else:
            items = _iter_json_lines(data)
        for n, obj, err in items:
            if err:
                _quarantine(bad, f, n, err, obj)
                continue
            try:
                out.append(_record(obj, f"{f}:{n}"))
            except RecordError as exc:
                _quarantine(bad, f, n, str(exc).split(": ", 1)[-1], obj)
    return out


def _content_id(rec: dict) -> str:
    key = "\0".join((rec["instruction"], rec.get("input", ""), rec["output"]))
    return "h" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def read_ie(
    records_path: str | Path, schema_path: str | Path, seed: int, neg_ratio: float, bad: list[dict]
) -> list[dict]:
    """IE records built into instructions (kg2instruct); bad records go to ``bad``."""
    from knowlm_ray.ie.records import iter_ie_records, load_schema
    from knowlm_ray.instruct.kg2instruct import build_instructions

    schema = load_schema(schema_path)
    good = []
    for n, line, rec, err in iter_ie_records(records_path, schema):
        if err:
            _quarantine(bad, records_path, n, err, line)
        else:
            good.append(rec)
    rows = build_instructions(good, schema, seed=seed, neg_ratio=neg_ratio)
    return [
        {
            "instruction": r["instruction"],
            "input": r["input"],
            "output": r["output"],
            "group": r["id"],
            "task": r["task"],
        }
        for r in rows
    ]


# ------------------------------------------------------------------------------- splitting
def split_groups(group_rows: dict[str, int], val_set_size: int, seed: int) -> set[str]:
    """The source records (groups) in validation: seeded-hash order until ``val_set_size`` rows."""

    def key(g: str) -> tuple[str, str]:
        return hashlib.sha256(f"{seed}\0{g}".encode()).hexdigest(), g

    val: set[str] = set()
    rows = 0
    for g in sorted(group_rows, key=key):
        if rows >= val_set_size:
            break
        val.add(g)
        rows += group_rows[g]
    return val


def assign(records: list[dict], val_set_size: int, seed: int) -> list[dict]:
    """Rows ``{id, task, split, instruction, input, output}``: id = ``group#k`` (k-th row of that
    source record in input order), unique, so sorting by it is total."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["group"]] = counts.get(r["group"], 0) + 1
    total = sum(counts.values())
    if val_set_size and val_set_size >= total:
        raise RecordError(f"val_set_size {val_set_size} leaves nothing to train on ({total} records)")
    val = split_groups(counts, val_set_size, seed)
    seen: dict[str, int] = {}
    rows = []
    for r in records:
        k = seen.get(r["group"], 0)
        seen[r["group"]] = k + 1
        rows.append(
            {
                "id": f"{r['group']}#{k}",
                "task": r["task"],
                "split": "validation" if r["group"] in val else "train",
                "instruction": r["instruction"],
                "input": r.get("input", ""),
                "output": r["output"],
                "prompt": r.get("prompt", ""),  # a format's own prompt (IEPile: OneKE's); "" = alpaca
            }
        )
    return rows


# ------------------------------------------------------------------------------- Ray side
class Tokenize:
    """Ray Data ``map_batches`` callable: one tokenizer per actor; drops rows with nothing to learn."""

    def __init__(self, tokenizer: str, cutoff_len: int, train_on_inputs: bool):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tokenizer)
        self.cutoff_len, self.train_on_inputs = cutoff_len, train_on_inputs

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols: dict[str, list] = {name: [] for name in _TOKENIZED.names}
        for rec in batch.to_pylist():
            row = tokenize_record(self.tok, rec, self.cutoff_len, self.train_on_inputs)
            if not any(x != IGNORE_INDEX for x in row["labels"][1:]):
                continue  # the response was cut away: nothing to learn (tokenize_records' rule)
            for k in ("input_ids", "labels"):
                cols[k].append(row[k])
            for k in ("id", "task", "split"):
                cols[k].append(rec[k])
        return pa.table(cols, schema=_TOKENIZED)


def _count_train(table: pa.Table) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(pc.equal(table["split"], "train")).as_py() or 0)


def write_instruction_part(path: str, slices: list[tuple[int, int, int]], *blocks: pa.Table) -> dict:
    """One shard from its slices of the sorted blocks (the body of a Ray task)."""
    import pyarrow.compute as pc

    table = gather(slices, list(blocks)).select(INSTRUCTION_SCHEMA.names).cast(INSTRUCTION_SCHEMA)
    with (
        atomic_path(path) as tmp,
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, INSTRUCTION_SCHEMA) as writer,
    ):
        writer.write_table(table)
    tokens = int(pc.sum(pc.list_value_length(table["input_ids"])).as_py() or 0)
    flat = pc.list_flatten(table["labels"])
    label_tokens = int(pc.sum(pc.not_equal(flat, IGNORE_INDEX)).as_py() or 0) if len(flat) else 0
    return {
        "rows": table.num_rows,
        "tokens": tokens,
        "label_tokens": label_tokens,
        "sha256": _sha256(path),
        "first": table["id"][0].as_py() if table.num_rows else None,
    }


def tokenize_and_write(rows: list[dict], cfg, tmp: Path) -> tuple[dict, list[dict]]:
    import ray
    import ray.data

    from knowlm_ray.runtime import map_refs

    splits = {s: {"rows": 0, "tokens": 0, "label_tokens": 0} for s in SPLITS}
    shards: list[dict] = []
    for s in SPLITS:
        (tmp / s).mkdir(parents=True)
    if not rows:
        return splits, shards
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(64, len(rows) // 256)))
    ds = ds.map_batches(
        Tokenize,
        fn_constructor_kwargs={
            "tokenizer": cfg.tokenizer,
            "cutoff_len": cfg.cutoff_len,
            "train_on_inputs": cfg.train_on_inputs,
        },
        batch_format="pyarrow",
        batch_size=256,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_tokenizers),
    )
    refs = ds.sort(["split", "id"]).to_arrow_refs()  # "train" < "validation": train rows first
    counts = map_refs(table_rows, refs)
    n_train = sum(map_refs(_count_train, refs))
    task = ray.remote(num_cpus=1)(write_instruction_part)
    pending = []
    for split, (start, stop) in zip(SPLITS, [(0, n_train), (n_train, sum(counts))]):
        if stop <= start:
            continue
        for i, slices in enumerate(plan_files(counts, cfg.rows_per_shard, start, stop)):
            used = sorted({b for b, _, _ in slices})
            local = [(used.index(b), lo, hi) for b, lo, hi in slices]
            name = f"{split}/part-{i:05d}.arrow"
            pending.append((split, name, task.remote(str(tmp / name), local, *[refs[b] for b in used])))
    for split, name, ref in pending:
        info = ray.get(ref)
        for k in ("rows", "tokens", "label_tokens"):
            splits[split][k] += info[k]
        shards.append(
            {
                "file": name,
                "rows": info["rows"],
                "tokens": info["tokens"],
                "label_tokens": info["label_tokens"],
                "sha256": info["sha256"],
            }
        )
    return splits, shards


# ------------------------------------------------------------------------------- the job
def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def run(cfg) -> dict:
    """Prepare ``cfg`` (an ``InstructionsConfig``); returns the manifest. Needs Ray initialised."""
    if not Path(cfg.tokenizer).is_dir():  # checked here: the actors would fail with a remote traceback
        raise MissingPathError(f"tokenizer: no such directory: {cfg.tokenizer}")
    bad: list[dict] = []
    records: list[dict] = []
    for path in cfg.inputs:
        records += read_alpaca(path, bad)
    if cfg.ie_records:
        records += read_ie(cfg.ie_records, cfg.schema_, cfg.seed, cfg.neg_ratio, bad)
    empty = sum(bool(r.get("empty")) for r in records)
    records = [r for r in records if not r.get("empty")]
    rows = assign(records, cfg.val_set_size, cfg.seed)

    with atomic_dir(cfg.out_dir) as tmp:
        splits, shards = tokenize_and_write(rows, cfg, tmp)
        (tmp / "quarantine").mkdir()
        if bad:
            with open(tmp / "quarantine" / "malformed.jsonl", "w", encoding="utf-8") as fh:
                for b in bad:
                    fh.write(json.dumps(b, ensure_ascii=False) + "\n")
        manifest = {
            "splits": splits,
            "read": len(records) + empty,
            "dropped": {
                "empty_response": empty,
                "malformed": len(bad),
                "cut_off": len(rows) - sum(s["rows"] for s in splits.values()),
            },
            "shards": shards,
            "config": cfg.model_dump(by_alias=True),
        }
        _write_json(manifest, tmp / "manifest.json")
    return manifest
