"""`knowlm weights download` without a hub: a local copy left by an earlier download (both the
hub cache and a --out directory), verified against the hub's listing; and the offline errors."""

import hashlib
import json
import os
import shutil
import time

import pytest

REPO = "zjunlp/tiny-test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS = ("model.safetensors", "tokenizer.model")


def _sha256(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _git_sha1(p):
    data = p.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _tree(src):
    files = {}
    for p in sorted(src.iterdir()):
        if p.name in LFS:
            files[p.name] = {"size": 134, "blob_id": "f" * 40, "lfs_sha256": _sha256(p), "lfs_size": p.stat().st_size}
        else:
            files[p.name] = {"size": p.stat().st_size, "blob_id": _git_sha1(p)}
    return {"format_version": 1, "files": files}


def _fake_cache(src, cache):
    """The layout huggingface_hub leaves in its cache after snapshot_download(REPO)."""
    store = cache / ("models--" + REPO.replace("/", "--"))
    (store / "refs").mkdir(parents=True)
    (store / "refs" / "main").write_text(COMMIT)
    snap = store / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (store / "blobs").mkdir()
    tree = _tree(src)
    for name, ent in tree["files"].items():
        blob = ent.get("lfs_sha256") or ent["blob_id"]
        shutil.copy2(src / name, store / "blobs" / blob)
        os.symlink(f"../../blobs/{blob}", snap / name)
    (store / "trees").mkdir()
    (store / "trees" / f"{COMMIT}.json").write_text(json.dumps(tree))
    return snap


def _fake_local_dir(src, out):
    """The layout snapshot_download(REPO, local_dir=out) leaves (files + .cache/huggingface)."""
    shutil.copytree(src, out)
    meta = out / ".cache" / "huggingface"
    (meta / "download").mkdir(parents=True)
    tree = _tree(src)
    now = time.time() + 5
    for name, ent in tree["files"].items():
        (meta / "download" / f"{name}.metadata").write_text(
            f"{COMMIT}\n{ent.get('lfs_sha256') or ent['blob_id']}\n{now}\n"
        )
    (meta / "trees").mkdir()
    (meta / "trees" / f"{COMMIT}.json").write_text(json.dumps(tree))


def test_offline_cache_copy_is_verified(tiny_model, tmp_path):
    from knowlm_ray.models.checkpoint import WeightsError
    from knowlm_ray.models.download import download

    snap = _fake_cache(tiny_model, tmp_path / "cache")
    s = download(REPO, offline=True, cache_dir=tmp_path / "cache")
    assert s["path"] == str(snap) and s["commit"] == COMMIT and not s["problems"]
    assert s["verified"]["sha256"] == 2 and s["verified"]["git_sha1"] == s["files"] - 2
    # a corrupted blob is named
    blob = (snap / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"model\.safetensors: sha256 differs from the hub's.*Delete those files"):
        download(REPO, offline=True, cache_dir=tmp_path / "cache")


def test_offline_local_dir_is_verified_and_checks_completeness(tiny_model, tmp_path, capsys):
    from knowlm_ray.cli import main
    from knowlm_ray.models.checkpoint import WeightsError
    from knowlm_ray.models.download import download

    out = tmp_path / "out"
    _fake_local_dir(tiny_model, out)
    main(["weights", "download", "--repo", REPO, "--out", str(out), "--offline"])
    assert f"{REPO}@{COMMIT}" in capsys.readouterr().out
    # an interrupted copy: a file is shorter than the hub says
    (out / "tokenizer.model").write_bytes((tiny_model / "tokenizer.model").read_bytes()[:100])
    with pytest.raises(WeightsError, match=r"tokenizer\.model: 100 bytes, the hub lists \d+"):
        download(REPO, out, offline=True, cache_dir=tmp_path / "c")
    (out / "tokenizer.model").unlink()
    with pytest.raises(WeightsError, match=r"tokenizer\.model: listed by the hub for this commit but not downloaded"):
        download(REPO, out, offline=True, cache_dir=tmp_path / "c")
    # --include narrows what must be there
    s = download(REPO, out, offline=True, include=["*.json", "*.safetensors"], cache_dir=tmp_path / "c")
    assert not s["problems"]


def test_offline_and_unreachable_errors_are_clear(tmp_path, capsys):
    from knowlm_ray.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["weights", "download", "--repo", REPO, "--out", str(tmp_path / "x"), "--offline"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot download {REPO}: offline (--offline), and no complete copy in" in err
    with pytest.raises(SystemExit):
        main(["weights", "download", "--repo", REPO, "--out", str(tmp_path / "x"), "--endpoint", "http://127.0.0.1:9"])
    assert "the hub at http://127.0.0.1:9 cannot be reached" in capsys.readouterr().err


def test_unverified_files_fail_unless_allowed(tiny_model, tmp_path, capsys):
    """A file with no listing entry and no etag (here: dropped into --out by hand, and the listing
    gone) cannot be checked: the command exits non-zero unless --allow-unverified."""
    from knowlm_ray.cli import main

    out = tmp_path / "out"
    _fake_local_dir(tiny_model, out)
    (out / "notes.txt").write_text("not from the hub")
    argv = ["weights", "download", "--repo", REPO, "--out", str(out), "--offline"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: 1 file(s) in {out} could not be checked against the hub (no size or hash published for them): "
        "notes.txt. Remove them, or pass --allow-unverified to accept them unchecked"
    )
    main([*argv, "--allow-unverified"])
    assert "1 unverified)" in capsys.readouterr().out
    # no listing at all: every file falls back to its etag; one without is unverified
    shutil.rmtree(out / ".cache" / "huggingface" / "trees")
    (out / ".cache" / "huggingface" / "download" / "config.json.metadata").unlink()
    (out / "notes.txt").unlink()
    with pytest.raises(SystemExit):
        main(argv)
    assert "config.json" in capsys.readouterr().err
