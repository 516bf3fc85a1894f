"""The typed config: params.yaml validates, and every bad key is named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bertops.config import BertopsConfig, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_repo_params_yaml_validates():
    cfg = load_config(REPO / "params.yaml")
    assert isinstance(cfg, BertopsConfig)
    # The file is the single source of configuration: it round-trips through the typed model unchanged.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert BertopsConfig.model_validate(raw).to_dict() == cfg.to_dict()


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"finetune\.learning_rat: unknown key"):
        load_config(write(tmp_path, {"finetune": {"learning_rat": 1e-4}}))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain_data\.dupe_factor"):
        load_config(write(tmp_path, {"pretrain_data": {"dupe_factor": "many"}}))


def test_literal_lists_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.preset: .*'tiny'.*got 'huge'"):
        load_config(write(tmp_path, {"model": {"preset": "huge"}}))


def test_seq_length_above_position_limit(tmp_path):
    data = {"model": {"max_sequence_length": 128}, "pretrain_data": {"max_seq_length": 256}}
    with pytest.raises(ConfigError, match=r"pretrain_data\.max_seq_length=256 is above"):
        load_config(write(tmp_path, data))


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    p = write(tmp_path, {})
    cfg = load_config(p, ["finetune.learning_rate=3e-5", "finetune.epochs=3", "model.preset=mini"])
    assert cfg.finetune.learning_rate == pytest.approx(3e-5)
    assert cfg.finetune.epochs == 3 and cfg.model.preset == "mini"
    with pytest.raises(ConfigError, match=r"finetune\.epochs"):
        load_config(p, ["finetune.epochs=0"])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(p, ["finetune.epochs"])


def test_validate_section_uses_yaml_name(tmp_path):
    cfg = load_config(write(tmp_path, {"validate": {"labels": ["a", "b", "c"]}}))
    assert cfg.validate_data.labels == ["a", "b", "c"]
    assert "validate" in cfg.to_dict() and "validate_data" not in cfg.to_dict()
    with pytest.raises(ConfigError, match=r"validate\.labels"):
        load_config(write(tmp_path, {"validate": {"labels": ["only-one"]}}))


def test_endpoint_resolution_config_then_env_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(write(tmp_path, {}))
    assert cfg.tracking_uri().startswith("sqlite:///") and cfg.ray_address() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert cfg.tracking_uri() == "http://mlflow.example:5000" and cfg.ray_address() == "ray://head:10001"
    cfg = load_config(write(tmp_path, {"tracking": {"uri": "http://other:5000"}}))
    assert cfg.tracking_uri() == "http://other:5000"


def test_flat_params_for_mlflow():
    flat = BertopsConfig().flat()
    assert flat["finetune.learning_rate"] == "0.0001"
    assert flat["validate.labels"] == '["negative", "positive"]'


def test_configuration_reference_is_current():
    from bertops.cli.common import CONFIG_DOC_HEADER
    from bertops.config import describe_config

    expected = CONFIG_DOC_HEADER + describe_config()
    actual = (REPO / "docs" / "configuration.md").read_text()
    assert actual == expected, "regenerate: bertops config --reference > docs/configuration.md"


def test_the_cli_finds_a_running_stacks_mlflow_and_falls_back_when_it_is_gone(tmp_path, monkeypatch) -> None:
    """While a stack runs (its stack.json names a live MLflow process) commands use its server without
    `stack env`; once that process is gone, the embedded store, which the server never writes to."""
    import json
    import subprocess
    import sys

    from bertops.config import BertopsConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = BertopsConfig()
    cfg.project.state_dir = str(tmp_path)
    embedded = f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve()}"
    assert cfg.tracking_uri() == embedded
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = {"services": {"mlflow": {"pid": proc.pid, "url": "http://127.0.0.1:5999"}}}
        (tmp_path / "stack.json").write_text(json.dumps(state))
        assert cfg.tracking_uri() == "http://127.0.0.1:5999"
    finally:
        proc.kill()
        proc.wait()
    assert cfg.tracking_uri() == embedded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")  # the environment still wins
    assert cfg.tracking_uri() == "http://elsewhere:5000"
