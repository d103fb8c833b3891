"""`knowlm weights download`: fetch a model repository from the Hugging Face Hub and check it.

KnowLM's ``tools/download.py`` is ``snapshot_download`` and nothing else: no checksum ("the
weights span 6 shards"). Here, after ``snapshot_download`` (which resumes partial files on a
re-run: that is the hub's own behaviour for both the cache and ``local_dir``), every file is
checked against what the hub published for that commit, from the tree listing the hub client
caches beside the files: the size, the sha256 of LFS files (all weight files) and the git blob
id of small files. A mismatch names the file; a missing file is reported too.

Offline (``--offline``, or no network) the same command finds a complete local copy and verifies
it, or says clearly that there is none. A file that cannot be checked (no listing and no etag
for it) fails the command unless ``--allow-unverified``. Note: ``knowlm`` sets ``HF_HUB_OFFLINE=1`` for every other
command so nothing downloads implicitly; this command goes online unless ``--offline`` is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from pathlib import Path

from knowlm_ray.models.checkpoint import WeightsError, sha256_file

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Set the hub client's offline switch for the duration of the call (it reads it per request)."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_tree(folder: Path, commit: str | None) -> dict[str, dict] | None:
    if not commit:
        return None
    f = folder / "trees" / f"{commit}.json"
    try:
        data = json.loads(f.read_text())
        files = data["files"]
        return files if isinstance(files, dict) else None
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _local_metadata(local_dir: Path, rel: str) -> tuple[str | None, str | None]:
    """(commit, etag) the hub client recorded for a file downloaded into ``local_dir``."""
    f = local_dir / ".cache" / "huggingface" / "download" / f"{rel}.metadata"
    try:
        lines = f.read_text().splitlines()
        return (lines[0].strip() or None, lines[1].strip() or None)
    except (OSError, IndexError):
        return None, None


def verify_snapshot(path: str | Path, repo_type: str = "model", include: list[str] | None = None) -> dict:
    """Check a downloaded snapshot (a ``local_dir`` or a cache ``snapshots/<commit>`` folder)."""
    from huggingface_hub.utils import filter_repo_objects

    root = Path(path)
    in_cache = root.parent.name == "snapshots"
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and ".cache" not in p.relative_to(root).parts
    )
    if in_cache:
        commit = root.name
        tree = _read_tree(root.parent.parent, commit)
    else:
        commits = {c for c in (_local_metadata(root, f)[0] for f in files) if c}
        commit = commits.pop() if len(commits) == 1 else None
        tree = _read_tree(root / ".cache" / "huggingface", commit)
        if len(commits) > 1:
            raise WeightsError(f"{root} mixes files from several commits: delete it and download again")
    problems, counts = [], {"sha256": 0, "git_sha1": 0, "size_only": 0, "unverified": 0}
    unverified: list[str] = []
    total = 0
    for rel in files:
        f = root / rel
        if not f.exists():
            problems.append(f"{rel}: dangling link into the cache (blob missing)")
            continue
        size = f.stat().st_size
        total += size
        ent = (tree or {}).get(rel)
        want_sha256 = want_sha1 = want_size = None
        if ent:
            want_size = ent.get("lfs_size") or ent.get("size")
            want_sha256 = ent.get("lfs_sha256")
            want_sha1 = None if want_sha256 else ent.get("blob_id")
        else:  # no listing: the etag the client kept (LFS: sha256; git: blob sha1)
            etag = Path(os.readlink(f)).name if in_cache and f.is_symlink() else _local_metadata(root, rel)[1]
            etag = (etag or "").strip('"').lower()
            if HEX64.match(etag):
                want_sha256 = etag
            elif HEX40.match(etag):
                want_sha1 = etag
        if want_size is not None and size != want_size:
            problems.append(f"{rel}: {size} bytes, the hub lists {want_size} (incomplete or corrupted)")
            continue
        if want_sha256:
            if sha256_file(f) != want_sha256:
                problems.append(f"{rel}: sha256 differs from the hub's ({want_sha256[:12]}...)")
                continue
            counts["sha256"] += 1
        elif want_sha1:
            if git_blob_sha1(f) != want_sha1:
                problems.append(f"{rel}: git blob id differs from the hub's ({want_sha1[:12]}...)")
                continue
            counts["git_sha1"] += 1
        elif want_size is not None:
            counts["size_only"] += 1
        else:
            counts["unverified"] += 1
            unverified.append(rel)
    if tree:
        expected = list(filter_repo_objects(items=list(tree), allow_patterns=include))
        missing = [r for r in expected if r not in set(files)]
        problems += [f"{r}: listed by the hub for this commit but not downloaded" for r in missing]
    return {
        "path": str(root),
        "commit": commit,
        "files": len(files),
        "bytes": total,
        "verified": counts,
        "unverified_files": unverified,
        "listing": tree is not None,
        "problems": problems,
    }


def download(
    repo: str,
    out: str | Path | None = None,
    revision: str | None = None,
    include: list[str] | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    offline: bool = False,
    cache_dir: str | Path | None = None,
    repo_type: str = "model",
    max_workers: int = 8,
    verify: bool = True,
    allow_unverified: bool = False,
) -> dict:
    """``snapshot_download`` + verification. ``out``: a plain directory (else the HF cache).

    A file the hub published no size or hash for (no listing, no etag: e.g. a file that was
    already in ``out``) is refused unless ``allow_unverified``: an unchecked file is not a
    downloaded model."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    t0 = time.perf_counter()
    where = str(out) if out else "the Hugging Face cache"
    hub = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        with _hub_offline(offline):
            path = snapshot_download(
                repo,
                revision=revision,
                local_dir=str(out) if out else None,
                cache_dir=str(cache_dir) if cache_dir else None,
                allow_patterns=include or None,
                token=token,
                endpoint=endpoint,
                local_files_only=offline,
                repo_type=repo_type,
                max_workers=max_workers,
            )
    except GatedRepoError:
        raise WeightsError(f"{repo} is gated: accept its licence on the hub and pass --token") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"repository {repo} not found on {hub} (or private: pass --token)") from None
    except RevisionNotFoundError:
        raise WeightsError(f"revision {revision!r} not found in {repo}") from None
    except HFValidationError as exc:
        raise WeightsError(f"invalid repository id {repo!r}: {exc}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        partial = " (a partial copy is there)" if out and Path(out).is_dir() and any(Path(out).iterdir()) else ""
        if offline:
            hint = "Run it without --offline where the hub is reachable; partial files resume"
            why = "offline (--offline)"
        else:
            hint = "Check the network or HF_ENDPOINT (e.g. a mirror), then re-run: partial files resume"
            why = f"the hub at {hub} cannot be reached"
        raise WeightsError(
            f"cannot download {repo}: {why}, and no complete copy in {where}{partial}. {hint}. [{type(exc).__name__}]"
        ) from None
    except HfHubHTTPError as exc:
        raise WeightsError(f"the hub refused the download of {repo}: {str(exc).splitlines()[0]}") from None
    report = {"repo": repo, "revision": revision or "main", "path": path}
    if verify:
        report.update(verify_snapshot(path, repo_type=repo_type, include=include))
        if report["problems"]:
            more = f" (and {len(report['problems']) - 3} more)" if len(report["problems"]) > 3 else ""
            raise WeightsError(
                f"downloaded files do not match the hub: {'; '.join(report['problems'][:3])}{more}. "
                "Delete those files and run the command again to fetch them anew"
            )
        names = report["unverified_files"]
        if names and not allow_unverified:
            more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
            raise WeightsError(
                f"{len(names)} file(s) in {report['path']} could not be checked against the hub (no size or hash "
                f"published for them): {', '.join(names[:3])}{more}. Remove them, or pass --allow-unverified "
                "to accept them unchecked"
            )
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report
