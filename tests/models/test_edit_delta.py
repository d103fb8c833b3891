"""Edit files: write / read, applying and reverting in memory, composing, streamed merge-edit."""

import json

import pytest
import torch

from knowlm_ray.models.edit_delta import (
    EditError,
    apply_edit,
    merge_edit,
    read_edit,
    revert_edit,
    revert_edit_dir,
    write_edit,
)

from .conftest import llama_config, read_all, save_checkpoint

NAME = "model.layers.1.mlp.down_proj.weight"
OTHER = "model.layers.0.mlp.down_proj.weight"


def load(model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()


def make_edit(model, out, names=(NAME,), seed=0, scale=0.5, model_dir=None, rank=2):
    """A random rank-``rank`` edit of ``names`` on ``model``'s current weights."""
    g = torch.Generator().manual_seed(seed)
    deltas, base = {}, {}
    for n in names:
        w = model.get_parameter(n)
        deltas[n] = (scale * torch.randn(w.shape[0], rank, generator=g), torch.randn(w.shape[1], rank, generator=g))
        base[n] = w.detach().clone()
    reqs = [{"prompt": "Michael Jordan was born in", "subject": "Michael Jordan", "target_new": "China"}]
    return write_edit(out, deltas, base, method="test", settings={"seed": seed}, requests=reqs, model_dir=model_dir)


@pytest.fixture(scope="module")
def sharded(tiny_model, tmp_path_factory):
    """The tiny model re-saved in 3 shards, so merge-edit really streams several files."""
    from knowlm_ray.models.checkpoint import Checkpoint

    with Checkpoint(tiny_model) as ck:
        sd = {n: ck.read(n) for n in ck.names()}
    from transformers import AutoConfig

    out = tmp_path_factory.mktemp("sharded") / "model"
    save_checkpoint(out, sd, AutoConfig.from_pretrained(tiny_model), shards=3, tokenizer_from=tiny_model)
    return out


def logits(model, ids=((1, 5, 9, 13, 200, 7),)):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


def test_round_trip_and_manifest(tiny_model, tmp_path):
    model = load(tiny_model)
    d = make_edit(model, tmp_path / "e", names=(NAME, OTHER), model_dir=tiny_model)
    e = read_edit(d)
    assert sorted(e.names) == sorted([NAME, OTHER])
    m = json.loads((d / "manifest.json").read_text())
    assert m["format"] == "knowlm-edit" and m["version"] == 1 and m["method"] == "test"
    assert m["requests"][0]["target_new"] == "China" and m["settings"] == {"seed": 0}
    p = m["base"]["params"][NAME]
    assert p["shape"] == list(model.get_parameter(NAME).shape) and p["dtype"] == "float32"
    assert len(p["sha256"]) == 64 and m["base"]["config_sha256"] and m["created"]
    u, v = e.deltas[NAME]
    assert u.dtype == torch.float32 and u.shape[1] == v.shape[1] == 2
    # the edit is small: far less than the model's weights
    size = sum(f.stat().st_size for f in d.iterdir())
    assert size < 0.1 * sum(f.stat().st_size for f in tiny_model.glob("*.safetensors"))


def test_read_refuses_missing_or_corrupt(tiny_model, tmp_path):
    with pytest.raises(EditError, match="not found"):
        read_edit(tmp_path / "nope")
    d = make_edit(load(tiny_model), tmp_path / "e", model_dir=tiny_model)
    (d / "edit.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(EditError, match="edit.safetensors"):
        read_edit(d)
    (d / "manifest.json").write_text("{")
    with pytest.raises(EditError, match="manifest.json"):
        read_edit(d)
    (d / "edit.safetensors").unlink()
    with pytest.raises(EditError, match="edit.safetensors is missing"):
        read_edit(d)


def test_apply_revert_and_refusals(tiny_model, tmp_path):
    model = load(tiny_model)
    before = logits(model)
    w0 = model.get_parameter(NAME).detach().clone()
    d = make_edit(model, tmp_path / "e", model_dir=tiny_model)
    e = read_edit(d)
    assert apply_edit(model, e) == {NAME: "sha256"}
    assert torch.allclose(model.get_parameter(NAME), w0 + e.delta(NAME))
    after = logits(model)
    assert not torch.allclose(before, after, atol=1e-3), "the edit changed nothing"
    # applied twice: the model is no longer the edit's base
    with pytest.raises(EditError, match=f"another base.*{NAME}"):
        apply_edit(model, e)
    assert revert_edit(model, e) == {NAME: "sha256"}
    assert torch.allclose(logits(model), before, atol=1e-5)
    # reverted within float rounding: revert again is refused, the edit applies again (fingerprint)
    with pytest.raises(EditError, match=f"does not carry.*{NAME}"):
        revert_edit(model, e)
    apply_edit(model, e)
    assert torch.allclose(logits(model), after, atol=1e-5)
    # another base: a model whose weight differs by more than rounding
    other = load(tiny_model)
    with torch.no_grad():
        other.get_parameter(NAME).mul_(1.01)
    with pytest.raises(EditError, match=NAME):
        apply_edit(other, e)
    # a model loaded in bf16 from the fp32 files is recognised by the fingerprint
    half = load(tiny_model, torch.bfloat16)
    assert apply_edit(half, e) == {NAME: "fingerprint"}


def test_two_edits_compose(tiny_model, tmp_path):
    model = load(tiny_model)
    a = make_edit(model, tmp_path / "a", seed=1, model_dir=tiny_model)
    apply_edit(model, a)
    b = make_edit(model, tmp_path / "b", names=(NAME, OTHER), seed=2, model_dir=tiny_model)
    apply_edit(model, b)
    want = logits(model)
    fresh = load(tiny_model)
    with pytest.raises(EditError, match=NAME):  # b's base is the model after a
        apply_edit(fresh, b)
    apply_edit(fresh, a)
    apply_edit(fresh, b)
    assert torch.equal(logits(fresh), want)


def test_merge_edit_equals_in_memory_and_reverts(sharded, tmp_path):
    from knowlm_ray.models.checkpoint import check_manifest

    model = load(sharded)
    a = make_edit(model, tmp_path / "a", seed=3, model_dir=sharded)
    apply_edit(model, a)
    b = make_edit(model, tmp_path / "b", names=(NAME, OTHER), seed=4, model_dir=sharded)
    apply_edit(model, b)
    want = {n: p.detach() for n, p in model.state_dict().items()}

    merged = merge_edit(sharded, [a, b], tmp_path / "merged")
    got = read_all(merged)
    assert len(list(merged.glob("*.safetensors"))) == 3
    assert set(got) == set(want)
    for n, t in got.items():
        assert torch.equal(t, want[n]), n
    assert check_manifest(merged) == []
    assert [x["edit"] for x in json.loads((merged / "edits.json").read_text())["edits"]] == [str(a), str(b)]
    assert torch.equal(logits(load(merged)), logits(model))

    # out of order: b's base is after a
    with pytest.raises(EditError, match="another base"):
        merge_edit(sharded, [b], tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()
    # revert b from the merged folder gives the model after a; reverting a edit it lacks is refused
    after_a = merge_edit(sharded, [a], tmp_path / "after_a")
    rev = revert_edit_dir(merged, b, tmp_path / "rev")
    base_w, rev_w = read_all(after_a), read_all(rev)
    for n in base_w:
        assert torch.allclose(base_w[n], rev_w[n], atol=1e-6), n
    assert [x["edit"] for x in json.loads((rev / "edits.json").read_text())["edits"]] == [str(a)]
    with pytest.raises(EditError, match="does not carry"):
        revert_edit_dir(sharded, a, tmp_path / "rev2")


def test_merge_edit_bf16_base(tmp_path, small_cfg):
    """A bf16 model folder: the edit computed on the in-memory bf16 weights merges to the same bytes."""
    from .conftest import random_state_dict

    base = save_checkpoint(tmp_path / "bf16", random_state_dict(small_cfg, 0, torch.bfloat16), small_cfg, shards=2)
    model = load(base, torch.bfloat16)
    a = make_edit(model, tmp_path / "a", scale=0.05, model_dir=base)
    assert read_edit(a).param(NAME)["dtype"] == "bfloat16"
    apply_edit(model, a)
    got = read_all(merge_edit(base, [a], tmp_path / "m"))
    assert got[NAME].dtype == torch.bfloat16
    assert torch.equal(got[NAME], model.get_parameter(NAME).detach())


def test_missing_parameter_refused(tmp_path, tiny_model):
    model = load(tiny_model)
    d = make_edit(model, tmp_path / "e", model_dir=tiny_model)
    cfg = llama_config(100, layers=1)
    from .conftest import random_state_dict

    one = save_checkpoint(tmp_path / "one", random_state_dict(cfg, 0), cfg)
    with pytest.raises(EditError, match=f"{NAME}, which the model"):
        merge_edit(one, [d], tmp_path / "out")


def test_merge_edit_and_revert_commands(tiny_model, tmp_path, capsys):
    import argparse

    from knowlm_ray.cli import main
    from knowlm_ray.edit import revert

    model = load(tiny_model)
    e = make_edit(model, tmp_path / "e", model_dir=tiny_model)
    out = tmp_path / "merged"
    main(["weights", "merge-edit", "--base", str(tiny_model), "--edit", str(e), "--out", str(out)])
    assert "1 edit applied" in capsys.readouterr().out
    apply_edit(model, e)
    assert torch.equal(logits(load(out)), logits(model))

    ap = argparse.ArgumentParser()
    revert.register(ap.add_subparsers())
    a = ap.parse_args(["revert", "--model", str(out), "--edit", str(e), "--out", str(tmp_path / "back")])
    a.fn(a)
    assert torch.allclose(logits(load(tmp_path / "back")), logits(load(tiny_model)), atol=1e-5)
    a = ap.parse_args(["revert", "--model", str(tiny_model), "--edit", str(e), "--out", str(tmp_path / "no")])
    with pytest.raises(EditError, match=f"does not carry edit {e}: {NAME}"):
        a.fn(a)
