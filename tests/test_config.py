import pytest

from knowlm_ray.config import (
    ConfigError,
    CorpusConfig,
    FinetuneConfig,
    PretrainConfig,
    apply_override,
    load_config,
    parse_job_args,
)


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_overrides_parse_yaml_values_and_nest():
    d = {"lora": {"r": 8}}
    apply_override(d, "lora.r=16")
    apply_override(d, "lora.target_modules=[q_proj, v_proj]")
    apply_override(d, "use_gpu=true")
    apply_override(d, "dedup.threshold=0.7")
    assert d == {
        "lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]},
        "use_gpu": True,
        "dedup": {"threshold": 0.7},
    }


def test_unknown_key_is_named(tmp_path):
    p = _write(tmp_path, "model: m\ndata: d\nmicro_batchsize: 3\n")
    with pytest.raises(ConfigError, match="micro_batchsize: unknown key"):
        load_config(PretrainConfig, p)


def test_wrong_type_is_named(tmp_path):
    p = _write(tmp_path, "model: m\ndata: d\n")
    with pytest.raises(ConfigError, match=r"max_steps: .*integer"):
        load_config(PretrainConfig, p, ["max_steps=lots"])
    with pytest.raises(ConfigError, match=r"lora\.r"):
        load_config(FinetuneConfig, p, ["lora.r=0"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    p = _write(tmp_path, "model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PretrainConfig, p)


def test_train_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(PretrainConfig, None, ["model=m", "data=d", "storage_path=s3://bucket/x"])
    assert cfg.model == str(tmp_path / "m")
    assert cfg.storage_path == "s3://bucket/x"


def test_lora_defaults_are_knowlm():
    cfg = FinetuneConfig(model="m", data="d")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.cutoff_len) == (16, 32, 0.05, 512)
    assert len(cfg.lora.target_modules) == 7 and cfg.train_on_inputs is False


def test_every_shipped_job_config_validates(repo_root):
    import importlib

    from knowlm_ray import config as C

    kinds = {"tiny_corpus": C.CorpusConfig, "tiny": C.PretrainConfig, "tiny_lora": C.FinetuneConfig}
    for name, cls in kinds.items():
        path = repo_root / "jobs" / "configs" / f"{name}.yaml"
        assert isinstance(load_config(cls, path), cls), path
    assert importlib.import_module("knowlm_ray.cli").build_parser()


def test_job_args_exit_2_with_message(tmp_path, capsys):
    p = _write(tmp_path, "inputs: []\ntokenizer: t\nmax_tokens: 4\n")
    with pytest.raises(SystemExit) as e:
        parse_job_args(CorpusConfig, ["--config", str(p)])
    assert e.value.code == 2
    assert "max_tokens" in capsys.readouterr().err
