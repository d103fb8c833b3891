"""Helpers for the training tests: tiny Arrow shards written here (no dependency on knowlm_ray.corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def write_shards(
    out_dir: Path, rows: list[list[int]], per_shard: int = 50, labels: list[list[int]] | None = None
) -> Path:
    """Arrow IPC *file* shards ``out_dir/shards/part-NNNNN.arrow`` like the corpus pipeline writes."""
    import pyarrow as pa

    shards = out_dir / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, len(rows), per_shard)):
        chunk = rows[start : start + per_shard]
        cols = {
            "input_ids": pa.array(chunk, type=pa.list_(pa.int32())),
            "doc_id": [f"d{start + i}" for i in range(len(chunk))],
            "source": ["test"] * len(chunk),
        }
        if labels is not None:
            cols["labels"] = pa.array(labels[start : start + per_shard], type=pa.list_(pa.int32()))
        table = pa.table(cols)
        with pa.ipc.new_file(str(shards / f"part-{k:05d}.arrow"), table.schema) as w:
            w.write_table(table)
    (out_dir / "manifest.json").write_text(json.dumps({"shards": len(rows)}), encoding="utf-8")
    return out_dir


def sample_lines(n: int) -> list[str]:
    """English prose from the shipped corpus (falls back to a fixed sentence set)."""
    lines: list[str] = []
    src = REPO / "data" / "sample" / "en.jsonl"
    if src.exists():
        for line in src.read_text(encoding="utf-8").splitlines():
            try:
                text = json.loads(line).get("text")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(text, str) and len(text) > 40:
                lines.append(text)
    if not lines:
        lines = [f"The river {i} flows past the old mill and the children count the boats." for i in range(20)]
    return [lines[i % len(lines)] for i in range(n)]


@pytest.fixture(scope="session")
def shard_writer():
    return write_shards


@pytest.fixture(scope="session")
def tiny_corpus(tiny_model, tmp_path_factory) -> Path:
    """~120 tokenized rows of real text in two shards, tokenized with the tiny model's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = [tok(t)["input_ids"][:96] + [tok.eos_token_id] for t in sample_lines(120)]
    return write_shards(tmp_path_factory.mktemp("corpus"), rows, per_shard=60)
