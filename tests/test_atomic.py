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


# ------------------------------------------------------------------------------- durability
def test_files_and_folders_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    import stat

    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(st.st_mode)))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(tmp_path / "a.txt", "x")
    # the temporary file (before it is renamed), then the folder holding the new name
    assert [d for _, d in synced] == [False, True] and synced[1][0] == str(tmp_path)
    assert ".a.txt." in synced[0][0]
    synced.clear()
    with atomic_dir(tmp_path / "out") as stage:
        (stage / "sub").mkdir()
        (stage / "sub" / "w.bin").write_bytes(b"1")
    files = [p for p, d in synced if not d]
    folders = [p for p, d in synced if d]
    assert len(files) == 1 and files[0].endswith("/sub/w.bin")
    assert str(tmp_path) == folders[-1] and len(folders) == 3  # sub, the staging folder, the parent


# ------------------------------------------------------------------------------- full disk
def test_a_full_disk_keeps_the_old_file_and_says_so_in_one_line(tmp_path, monkeypatch):
    """A real ENOSPC from the kernel: the temporary name is made a link to /dev/full (every write
    to it fails with ENOSPC), the only way to fill a disk here without root."""
    import knowlm_ray.atomic as atomic
    from knowlm_ray.atomic import DiskFullError
    from knowlm_ray.errors import UserError

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    target = tmp_path / "manifest.json"
    target.write_bytes(b'{"old": 1}\n')
    real_sibling = atomic.sibling

    def to_dev_full(path, suffix="tmp"):
        tmp = real_sibling(path, suffix)
        tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(atomic, "sibling", to_dev_full)
    with pytest.raises(DiskFullError) as err:
        atomic_write_bytes(target, b"x" * 100_000)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    assert str(err.value) == f"no space left on device writing {target}; the previous {target} is intact"
    assert target.read_bytes() == b'{"old": 1}\n' and _hidden(tmp_path) == []
    with pytest.raises(DiskFullError, match=r"new\.json was not created$"):
        atomic_write_text(tmp_path / "new.json", "{}")
    assert not (tmp_path / "new.json").exists() and _hidden(tmp_path) == []


def test_a_full_disk_in_a_staged_dir_keeps_the_old_dir(tmp_path, monkeypatch):
    from knowlm_ray.atomic import DiskFullError

    out = tmp_path / "corpus"
    with atomic_dir(out) as stage:
        (stage / "a.arrow").write_bytes(b"old shard")

    def full(fd):  # ENOSPC surfacing at fsync (delayed allocation), raised where the kernel would
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError) as err:
        with atomic_dir(out) as stage:
            (stage / "train").mkdir()
            (stage / "train" / "b.arrow").write_bytes(b"new shard")
    assert str(err.value) == (f"no space left on device writing {out}/train/b.arrow; the previous {out} is intact")
    assert [p.name for p in out.iterdir()] == ["a.arrow"] and (out / "a.arrow").read_bytes() == b"old shard"
    assert _hidden(tmp_path) == []


def test_a_disk_full_error_from_a_ray_task_is_recognised(tmp_path):
    """What a driver sees when a Ray task ran out of space: RayTaskError carrying the OSError."""
    from ray.exceptions import RayTaskError

    from knowlm_ray.atomic import DiskFullError, disk_full_error

    try:
        raise OSError(28, "No space left on device", str(tmp_path / ".out.1-0a0b0c0d.tmp" / "part-00000.arrow"))
    except OSError as exc:
        remote = RayTaskError("write_part", "traceback", exc).as_instanceof_cause()
    err = disk_full_error(remote, tmp_path / "out", True, tmp_path / ".out.1-0a0b0c0d.tmp")
    assert isinstance(err, DiskFullError)
    assert (
        str(err)
        == f"no space left on device writing {tmp_path}/out/part-00000.arrow; the previous {tmp_path}/out is intact"
    )
    assert disk_full_error(RuntimeError("other"), tmp_path / "out", True) is None


# ------------------------------------------------------------------------------- half swaps
def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_swap_killed_between_its_renames_is_repaired_by_the_next_run(tmp_path):
    from knowlm_ray.atomic import repair_swap

    out = tmp_path / "model"
    pid = _dead_pid()
    # what a writer killed between `out -> .old` and `staging -> out` leaves
    old = tmp_path / f".model.{pid}-0123abcd.old"
    old.mkdir()
    (old / "w.bin").write_bytes(b"previous")
    staging = tmp_path / f".model.{pid}-89abcdef.tmp"
    staging.mkdir()
    (staging / "w.bin").write_bytes(b"new, maybe half")
    assert not out.exists()
    done = repair_swap(out)
    assert len(done) == 2 and done[0].startswith(f"restored {out}")
    assert (out / "w.bin").read_bytes() == b"previous" and _hidden(tmp_path) == []
    # a leftover .old beside a present output is only cleaned; so is a dead writer's file temp
    (tmp_path / f".model.{pid}-00000000.old").mkdir()
    (tmp_path / f".model.{pid}-11111111.tmp").write_text("half")
    with atomic_dir(out) as stage:  # the next run repairs before it writes
        (stage / "w.bin").write_bytes(b"next")
    assert (out / "w.bin").read_bytes() == b"next" and _hidden(tmp_path) == []


def test_repair_leaves_live_writers_and_other_names_alone(tmp_path):
    from knowlm_ray.atomic import repair_swap

    live = tmp_path / f".model.{os.getpid()}-0123abcd.old"  # this process: a writer mid-swap
    live.mkdir()
    other = tmp_path / f".model2.{_dead_pid()}-0123abcd.old"  # another output's
    other.mkdir()
    plain = tmp_path / ".model.keep"
    plain.write_text("not ours")
    assert repair_swap(tmp_path / "model") == []
    assert live.exists() and other.exists() and plain.exists() and not (tmp_path / "model").exists()
