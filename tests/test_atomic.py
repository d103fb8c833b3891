"""Atomic writes: success replaces, failure leaves the old content and nothing hidden behind."""

from __future__ import annotations

import os

import pytest

from knowlm_ray.atomic import (
    atomic_dir,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    publish_dir,
    sibling,
)


class Boom(RuntimeError):
    pass


def _hidden(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_sibling_names_are_hidden_unique_and_swept_by_tmp_globs(tmp_path):
    a, b = sibling(tmp_path / "x.json"), sibling(tmp_path / "x.json")
    assert a != b and a.parent == tmp_path
    assert a.name.startswith(".x.json.") and a.match(".*.tmp") and sibling(a, "old").name.endswith(".old")


def test_success_replaces_and_creates_the_parent(tmp_path):
    target = tmp_path / "new" / "data.txt"
    atomic_write_text(target, "first ✓")
    atomic_write_text(target, "second ✓")
    assert target.read_text(encoding="utf-8") == "second ✓"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _hidden(target.parent) == []


def test_the_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "f.jsonl"
    with atomic_open(target) as fh:
        fh.write("line\n")
        fh.flush()
        assert not target.exists()  # a reader still sees nothing (or the old file)
    assert target.read_text() == "line\n"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise Boom
    with pytest.raises(Boom):
        with atomic_open(target, "wb") as fh:
            fh.write(b"half")
            raise Boom
    assert target.read_text() == "old" and _hidden(tmp_path) == []


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "never.bin") as tmp:
            tmp.write_bytes(b"x")
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_files_get_umask_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.json", "{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644


def test_publish_dir_replaces_an_existing_dir_and_leaves_no_old(tmp_path):
    out, stage = tmp_path / "out", tmp_path / "stage"
    out.mkdir()
    (out / "stale.bin").write_text("old")
    stage.mkdir()
    (stage / "config.json").write_text("{}")
    assert publish_dir(stage, out) == out
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert not stage.exists() and _hidden(tmp_path) == []


def test_publish_dir_replaces_a_file_or_symlink_and_fills_an_empty_place(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not mine to delete")
    for name, make in (
        ("file", lambda p: p.write_text("x")),
        ("link", lambda p: p.symlink_to(elsewhere)),
        ("fresh", lambda p: None),
    ):
        out, stage = tmp_path / name, tmp_path / f"stage-{name}"
        make(out)
        stage.mkdir()
        (stage / "a").write_text(name)
        publish_dir(stage, out)
        assert out.is_dir() and not out.is_symlink() and (out / "a").read_text() == name
    assert (elsewhere / "keep.txt").exists() and _hidden(tmp_path) == []


def test_a_failed_swap_puts_the_old_dir_back(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.bin").write_text("old")
    with pytest.raises(FileNotFoundError):
        publish_dir(tmp_path / "no-such-stage", out)
    assert (out / "model.bin").read_text() == "old" and _hidden(tmp_path) == []


def test_atomic_dir_publishes_on_success_and_removes_staging_on_failure(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".model.")
        (stage / "w.bin").write_text("v1")
        assert not out.exists()
    with pytest.raises(Boom):
        with atomic_dir(out) as stage:
            (stage / "w.bin").write_text("half")
            raise Boom
    assert (out / "w.bin").read_text() == "v1" and _hidden(tmp_path) == []
