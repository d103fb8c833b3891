"""Personal data: what counts (and what does not), masking, and the corpus filter (filters.pii)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from knowlm_ray.config import FilterConfig
from knowlm_ray.corpus.filters import annotate_batch, filter_reason
from knowlm_ray.corpus.pii import find_pii, mask_pii
from knowlm_ray.corpus.schema import DOC_SCHEMA, FILTERED, OK


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("write to zhang.san+x@zju.edu.cn today", "write to <EMAIL> today"),
        ("电话13800138000，或+86 138-0013-8000", "电话<PHONE>，或<PHONE>"),
        ("call +44 20 7946 0958 or (555) 123-4567 or 555.123.4567", "call <PHONE> or <PHONE> or <PHONE>"),
        ("host 192.168.1.20, v6 2001:db8::8a2e:370:7334 and ::1", "host <IP>, v6 <IP> and <IP>"),
    ],
)
def test_found_and_masked(text, masked):
    assert mask_pii(text)[0] == masked


@pytest.mark.parametrize(
    "text",
    [
        "In 2023, 1,234 people paid 12.50 each; version 1.2.3; 12:30:45; ratio 3:2",
        "order 123456789012, 999.1.1.1 is no address, nor 10.0.0.1234",
        "浙江大学创建于1897年，占地5,000,000平方米。",
        "ISBN 978-7-111-54742-6 and pi 3.14159",
    ],
)
def test_ordinary_numbers_are_left_alone(text):
    assert find_pii(text) == []


def _doc(doc_id, text):
    return {"doc_id": doc_id, "source": "s", "lang": "en", "file": "f", "line": 1, "text": text,
            "status": OK, "reason": None, "raw": None, "key": None}  # fmt: skip


def test_corpus_filter_masks_or_drops_and_is_off_by_default():
    text = "Contact the archive at archive@example.org or 555-123-4567 for the scanned pages."
    batch = pa.Table.from_pylist([_doc("s/f:1", text)], schema=DOC_SCHEMA)
    off = FilterConfig.model_validate({"length": {"min_chars": 10}})
    assert annotate_batch(batch, off.model_dump()).to_pylist()[0]["text"] == text
    mask = FilterConfig.model_validate({"length": {"min_chars": 10}, "pii": {"enabled": True}})
    (row,) = annotate_batch(batch, mask.model_dump()).to_pylist()
    assert row["status"] == OK and row["text"] == "Contact the archive at <EMAIL> or <PHONE> for the scanned pages."
    drop = FilterConfig.model_validate({"length": {"min_chars": 10}, "pii": {"enabled": True, "action": "drop"}})
    (row,) = annotate_batch(batch, drop.model_dump()).to_pylist()
    assert (row["status"], row["reason"]) == (FILTERED, "pii: email 1, phone 1")
    assert filter_reason(text, drop, "en") == "pii: email 1, phone 1"
