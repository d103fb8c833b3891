"""diff / recover: KnowLM's tuned = raw + diff, streamed tensor by tensor with integrity checks."""

import json
import shutil

import pytest
import torch

from .conftest import random_state_dict, read_all, save_checkpoint


@pytest.fixture(scope="module")
def pair(tmp_path_factory, small_cfg, tiny_model):
    """A raw model (3 shards) and a fine-tuned one (2 shards, other boundaries)."""
    root = tmp_path_factory.mktemp("pair")
    raw_sd = random_state_dict(small_cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    # fine-tuning moves weights a little: a relative change keeps tuned - raw exact in fp32 (Sterbenz)
    tuned_sd = {k: v * (1 + 0.01 * (2 * torch.rand(v.shape, generator=g) - 1)) for k, v in raw_sd.items()}
    raw = save_checkpoint(root / "raw", raw_sd, small_cfg, shards=3, tokenizer_from=tiny_model)
    tuned = save_checkpoint(root / "tuned", tuned_sd, small_cfg, shards=2, tokenizer_from=tiny_model)
    return raw, tuned


def _cli(*args):
    from knowlm_ray.cli import main

    main(["weights", *map(str, args)])


def test_diff_then_recover_round_trips_exactly_fp32(pair, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw, tuned = pair
    _cli("diff", "--raw", raw, "--tuned", tuned, "--out", tmp_path / "diff")
    diff = tmp_path / "diff"
    assert json.loads((diff / "knowlm_diff.json").read_text())["inexact_elements"] == 0
    want, got_diff, base = read_all(tuned), read_all(diff), read_all(raw)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(got_diff[name], want[name] - base[name])  # KnowLM's convention, as published

    _cli("recover", "--raw", raw, "--diff", diff, "--out", tmp_path / "rec")
    out = capsys.readouterr().out
    assert "sum check passed" in out and "match checksums.sha256" in out
    rec = tmp_path / "rec"
    got = read_all(rec)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), "fp32 round trip is not bit-exact"
    index = json.loads((rec / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want) and len(set(index["weight_map"].values())) == 2
    assert (rec / "tokenizer.model").is_file() and (rec / "checksums.sha256").is_file()
    assert not list(tmp_path.glob(".rec.*")), "staging dir left behind"
    model, info = AutoModelForCausalLM.from_pretrained(rec, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(rec))


def test_round_trip_fp16_within_tolerance(pair, tmp_path, small_cfg):
    from knowlm_ray.models.weight_diff import make_diff, recover

    raw16 = save_checkpoint(
        tmp_path / "raw16", {k: v.half() for k, v in read_all(pair[0]).items()}, small_cfg, shards=2
    )
    g = torch.Generator().manual_seed(2)
    tuned16 = {k: (v.float() + 1e-3 * torch.randn(v.shape, generator=g)).half() for k, v in read_all(raw16).items()}
    save_checkpoint(tmp_path / "tuned16", tuned16, small_cfg, shards=2)
    s = make_diff(raw16, tmp_path / "tuned16", tmp_path / "diff16")
    assert s["tensors"] == len(tuned16)
    assert all(v.dtype == torch.float16 for v in read_all(tmp_path / "diff16").values())
    recover(raw16, tmp_path / "diff16", tmp_path / "rec16")
    got = read_all(tmp_path / "rec16")
    for k, v in tuned16.items():
        assert got[k].dtype == torch.float16
        torch.testing.assert_close(got[k].float(), v.float(), rtol=2e-3, atol=2e-6, msg=k)
    cfg = json.loads((tmp_path / "rec16" / "config.json").read_text())
    assert cfg["dtype"] == "float16"


def test_corrupted_diff_is_refused(pair, tmp_path):
    from knowlm_ray.models.checkpoint import WeightsError
    from knowlm_ray.models.weight_diff import make_diff, recover

    raw, tuned = pair
    diff = tmp_path / "diff"
    make_diff(raw, tuned, diff)
    shard = sorted(diff.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3997] ^= 0x7F  # flip the exponent bits of one float32 weight (its high byte)
    shard.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 differs.*download it again"):
        recover(raw, diff, tmp_path / "out")
    # without the manifest, the per-tensor fingerprints still name the tensor
    (diff / "checksums.sha256").unlink()
    with pytest.raises(WeightsError, match=r"recovered tensor \S+ (does not match|has NaN).*corrupted"):
        recover(raw, diff, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    # a truncated shard (interrupted download) is caught before any work
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(WeightsError, match="truncated"):
        recover(raw, diff, tmp_path / "out")


def test_wrong_base_is_refused(pair, tmp_path, small_cfg):
    from knowlm_ray.models.checkpoint import WeightsError
    from knowlm_ray.models.weight_diff import make_diff, recover

    from .conftest import llama_config

    raw, tuned = pair
    make_diff(raw, tuned, tmp_path / "diff")
    other = save_checkpoint(tmp_path / "other", random_state_dict(small_cfg, seed=7), small_cfg, shards=2)
    with pytest.raises(WeightsError, match=r"raw tensor \S+ is not the one this diff was made from.*wrong --raw"):
        recover(other, tmp_path / "diff", tmp_path / "out")
    bigger = llama_config(small_cfg.vocab_size, hidden=96)
    big = save_checkpoint(tmp_path / "big", random_state_dict(bigger, seed=0), bigger)
    with pytest.raises(
        WeightsError,
        match=r"tensor \S+ has shape \[[\d, ]*64[\d, ]*\] in the diff but "
        r"\[[\d, ]*96[\d, ]*\] in the raw model; .*\(and \d+ more\)",
    ):
        recover(big, tmp_path / "diff", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_knowlm_style_diff_with_expect_sum_and_legacy_bin(pair, tmp_path, small_cfg):
    """A diff as KnowLM publishes it: pytorch_model-*.bin, no fingerprints; the raw model in .bin too."""
    from knowlm_ray.models.checkpoint import WeightsError
    from knowlm_ray.models.weight_diff import recover

    raw, tuned = pair
    base, want = read_all(raw), read_all(tuned)
    diff_sd = {k: want[k] - base[k] for k in want}
    diff_sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)  # transformers 4.28 saved this buffer
    kdiff = save_checkpoint(tmp_path / "kdiff", diff_sd, small_cfg, shards=2, fmt="bin", tokenizer_from=raw)
    assert (kdiff / "pytorch_model.bin.index.json").is_file()
    raw_bin = save_checkpoint(tmp_path / "raw_bin", base, small_cfg, shards=3, fmt="bin")
    expected = sum(float(v.sum()) for v in want.values())

    with pytest.raises(WeightsError, match=r"integrity check failed: .*sum to [-\d.]+, expected"):
        recover(raw_bin, kdiff, tmp_path / "bad", expect_sum=expected + 5)
    s = recover(raw_bin, kdiff, tmp_path / "rec", expect_sum=expected)
    assert any("sum check passed" in n for n in s["notes"])
    got = read_all(tmp_path / "rec")
    assert got.keys() == want.keys()  # the inv_freq buffer is not written out
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_legacy_bin_is_loaded_weights_only(tmp_path, pair):
    """A .bin that needs a full unpickle (arbitrary objects) is refused, never executed."""
    from knowlm_ray.models.checkpoint import WeightsError
    from knowlm_ray.models.weight_diff import recover

    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy2(pair[0] / "config.json", evil / "config.json")

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model.embed_tokens.weight": Boom()}, evil / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="weights-only"):
        recover(pair[0], evil, tmp_path / "out")


def test_cli_errors_are_one_line(pair, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli("recover", "--raw", pair[0], "--diff", tmp_path / "nope", "--out", tmp_path / "o")
    assert exc.value.code == 2
    assert "diff directory not found" in capsys.readouterr().err


def test_output_may_not_overwrite_an_input(pair, tmp_path):
    from knowlm_ray.models.checkpoint import WeightsError
    from knowlm_ray.models.lora import merge_lora
    from knowlm_ray.models.weight_diff import make_diff, recover

    raw, tuned = pair
    with pytest.raises(WeightsError, match="--out .* is also an input"):
        make_diff(raw, tuned, tuned)
    make_diff(raw, tuned, tmp_path / "diff")
    with pytest.raises(WeightsError, match="--out .* is also an input"):
        recover(raw, tmp_path / "diff", raw)
    with pytest.raises(WeightsError, match="--out .* is also an input"):
        merge_lora(raw, tmp_path / "diff", raw)


def _tree_bytes(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_recover_refuses_unlisted_files_and_checks_what_it_copies(pair, tmp_path):
    """The issue's case: a shard missing from checksums.sha256 was reported as "diff files match"."""
    from knowlm_ray.models.checkpoint import WeightsError
    from knowlm_ray.models.weight_diff import make_diff, recover

    raw, tuned = pair
    diff = tmp_path / "diff"
    make_diff(raw, tuned, diff)
    manifest = (diff / "checksums.sha256").read_text()
    shard = sorted(diff.glob("model-*.safetensors"))[1].name
    (diff / "checksums.sha256").write_text("".join(ln + "\n" for ln in manifest.splitlines() if shard not in ln))
    with pytest.raises(WeightsError, match=rf"^{shard} is not listed in checksums\.sha256\. The diff is incomplete"):
        recover(raw, diff, tmp_path / "out")
    (diff / "checksums.sha256").write_text(manifest)
    # the files recover copies are checked too: a tokenizer or config swapped after publishing
    for name in ("tokenizer.model", "config.json"):
        original = (diff / name).read_bytes()
        (diff / name).write_bytes(original + b" ")
        with pytest.raises(WeightsError, match=rf"^{name}: sha256 differs from checksums\.sha256"):
            recover(raw, diff, tmp_path / "out")
        (diff / name).write_bytes(original)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    s = recover(raw, diff, tmp_path / "out")
    assert any(n.startswith("all ") and n.endswith("diff files match checksums.sha256") for n in s["notes"])


def test_a_full_disk_during_recover_keeps_the_previous_output(pair, tmp_path, monkeypatch):
    import os

    from knowlm_ray.atomic import DiskFullError
    from knowlm_ray.models.weight_diff import make_diff, recover

    raw, tuned = pair
    make_diff(raw, tuned, tmp_path / "diff")
    out = tmp_path / "rec"
    recover(raw, tmp_path / "diff", out)
    before = _tree_bytes(out)

    # No unprivileged way to fill a disk here: ENOSPC is raised where the kernel reports it for
    # delayed allocation, at fsync of the new files (only this test patches the write layer).
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError) as err:
        recover(raw, tmp_path / "diff", out)
    msg = str(err.value)
    assert msg.startswith(f"no space left on device writing {out}/") and msg.endswith(f"; the previous {out} is intact")
    monkeypatch.undo()
    assert _tree_bytes(out) == before and not list(tmp_path.glob(".rec.*"))
