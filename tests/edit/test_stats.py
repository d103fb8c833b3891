"""Key statistics: the Ray Data job's C equals a plain loop's, a stopped run resumes to the same
sums, the cache is found by model and module, refusals name the layer."""

import json

import pytest
import torch

from knowlm_ray.edit.stats import compute_stats, load_cached_stats, model_checksum, run
from knowlm_ray.edit.stats_config import EditStatsConfig

MODULES = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_model):
    """Two Arrow shards of real tokenised sample text, rows of uneven length (some empty)."""
    import pyarrow as pa
    from transformers import AutoTokenizer

    from knowlm_ray.corpus.shards import write_arrow_file

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = [
        f"浙江大学位于杭州市，第{i}届学生在西湖边读书。The river Thames flows through London {i}." * (1 + i % 3)
        for i in range(22)
    ]
    rows = [tok(t)["input_ids"][: 5 + 7 * (i % 5)] for i, t in enumerate(texts)]
    rows[3] = []
    out = tmp_path_factory.mktemp("stats_corpus") / "corpus"
    for k, part in enumerate((rows[:12], rows[12:])):
        table = pa.table(
            {
                "input_ids": pa.array(part, pa.list_(pa.int32())),
                "doc_id": [f"d{k}-{i}" for i in range(len(part))],
                "source": ["sample"] * len(part),
            }
        )
        write_arrow_file(table, out / "shards" / f"part-{k:05d}.arrow")
    return out, rows


def reference_stats(model_dir, rows, modules):
    """The plain definition: one row at a time, C = sum over tokens of k k^T / tokens (float64)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    keys = {m: [] for m in modules}
    hooks = [
        model.get_submodule(m).register_forward_pre_hook(lambda _mod, a, m=m: keys[m].append(a[0][0].double()))
        for m in modules
    ]
    with torch.no_grad():
        for r in rows:
            if r:
                model(torch.tensor([r]))
    for h in hooks:
        h.remove()
    out = {}
    for m in modules:
        k = torch.cat(keys[m])
        out[m] = (k.T @ k / k.shape[0], k.shape[0])
    return out


def cfg_for(tiny_model, data, cache, **kw):
    base = dict(model=str(tiny_model), data=str(data), layers=[0, 1], block_rows=4, batch_rows=3, cache_dir=str(cache))
    return EditStatsConfig(**{**base, **kw})


@pytest.mark.slow
def test_ray_job_equals_plain_loop_and_resumes(tiny_model, shards, tmp_path, ray_local, capsys):
    data, rows = shards
    want = reference_stats(tiny_model, rows[:18], MODULES)

    # a run stopped after 2 of 5 blocks, leaving what a killed run leaves (a saved total, a block
    # file not folded yet, a writer's stray temp file); the same blocks and files whichever way
    # they were computed, so the stop is made in the plain loop (one Ray execution per test)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        run(cfg_for(tiny_model, data, cache, n_samples=18, fold_every_s=0), use_ray=False, stop_after=2)
    work = next((cache / model_checksum(tiny_model, cache)[:16] / "runs").iterdir())
    assert (work / "total.safetensors").is_file()
    with pytest.raises(KeyboardInterrupt):  # block 2 written, not folded: fold_every_s not reached
        run(cfg_for(tiny_model, data, cache, n_samples=18, fold_every_s=3600), use_ray=False, stop_after=1)
    assert (work / "parts" / "block-00002.safetensors").is_file()
    (work / "parts" / ".block-00004.safetensors.123-abcd.tmp").write_bytes(b"half")

    s = run(cfg_for(tiny_model, data, cache, n_samples=18, num_actors=2))  # the Ray Data job
    assert s["blocks"] == 5 and s["blocks_run"] == 2 and s["blocks_resumed"] == 3
    assert s["n_samples"] == 17 and s["n_tokens"] == want[MODULES[0]][1]  # row 3 is empty
    assert not work.exists()
    for m in MODULES:
        c, n = load_cached_stats(tiny_model, m, cache_dir=cache)
        assert n == 17 and c.dtype == torch.float32
        assert torch.allclose(c.double(), want[m][0], rtol=1e-4, atol=1e-7), m
    err = capsys.readouterr().err
    assert "block     3 done" in err and "C = E[k k^T] of 2 modules over 17 rows" in err
    assert "2 blocks run, 3 resumed" in err
    # a second run is answered from the cache
    assert run(cfg_for(tiny_model, data, cache, n_samples=18))["cached"] is True


def test_plain_loop_and_cache_lookup(tiny_model, shards, tmp_path):
    data, rows = shards
    cache = tmp_path / "cache"
    m = MODULES[1]
    assert load_cached_stats(tiny_model, m, cache_dir=cache) is None
    c, n = compute_stats(tiny_model, m, data, 0, cache_dir=cache, use_ray=False, block_rows=8, progress=False)
    want = reference_stats(tiny_model, rows, [m])[m][0]
    assert n == 21 and torch.allclose(c.double(), want, rtol=1e-4, atol=1e-7)
    compute_stats(tiny_model, m, data, 10, cache_dir=cache, use_ray=False, progress=False)
    assert load_cached_stats(tiny_model, m, cache_dir=cache)[1] == 21  # the most samples
    assert load_cached_stats(tiny_model, m, cache_dir=cache, min_samples=22) is None
    assert load_cached_stats(tiny_model, MODULES[0], cache_dir=cache) is None  # not computed
    # another model (one weight changed) does not see these statistics
    other = tmp_path / "other"
    other.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-6
    (other / "config.json").write_text(json.dumps(cfg))
    assert load_cached_stats(other, m, cache_dir=cache) is None


def test_refusals_name_the_layer(tiny_model, shards, tmp_path):
    from knowlm_ray.config import ConfigError

    data, _ = shards
    with pytest.raises(ConfigError, match=r"model\.layers\.7\.mlp\.down_proj.*layers 0\.\.1"):
        run(cfg_for(tiny_model, data, tmp_path, layers=[1, 7]), use_ray=False)
    with pytest.raises(ValueError, match="layers"):
        EditStatsConfig(model=str(tiny_model), data=str(data))
