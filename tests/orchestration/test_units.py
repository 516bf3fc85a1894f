"""Fast unit tests of the orchestration's pure parts: the one params schema (both sides), data versions from
dvc.lock, the pretraining decision, the stack's credentials."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from bertops.config import load_config
from bertops.orchestration import dvc_ops, tasks
from bertops.orchestration.retrain_params import (
    RetrainParamsError,
    airflow_params,
    conf_from_sets,
    conf_to_overrides,
    validate_conf,
)
from bertops.orchestration.tasks import pretrain_decision, record_pretraining

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_cli_sets_map_to_named_params_and_overrides() -> None:
    conf = conf_from_sets(["finetune.learning_rate=3e-5", "finetune.epochs=3", "model.preset=mini",
                           "finetune.scaling.num_workers=2", "pretrain.max_steps=9"])  # fmt: skip
    assert conf == {"learning_rate": 3e-5, "epochs": 3, "model_size": "mini", "workers": 2,
                    "overrides": ["pretrain.max_steps=9"]}  # fmt: skip
    overrides = conf_to_overrides(validate_conf(conf))
    cfg = load_config(REPO_ROOT / "params.yaml", overrides)
    assert cfg.finetune.learning_rate == 3e-5 and cfg.finetune.optimizer.learning_rate == 3e-5
    assert cfg.finetune.epochs == 3 and cfg.model.preset == "mini" and cfg.pretrain.max_steps == 9
    assert cfg.pretrain.scaling.num_workers == 2 and cfg.finetune.scaling.num_workers == 2


@pytest.mark.parametrize(
    ("conf", "needle"),
    [
        ({"epochs": 0}, "epochs"),
        ({"task": "translation"}, "task"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"use_gpu": "yes"}, "use_gpu"),
        ({"init_checkpoint": "s3://x"}, "init_checkpoint"),
        ({"promotion": "sometimes"}, "promotion"),
        ({"pretraining": "maybe"}, "pretraining"),
        ({"overrides": ["no-equals-sign"]}, "overrides"),
        ({"unknown_param": 1}, "unknown_param"),
    ],
)
def test_bad_params_refused_by_the_schema_and_by_airflow_params(conf: dict, needle: str) -> None:
    with pytest.raises(RetrainParamsError, match=needle):
        validate_conf(conf)
    # The DAG's Params are built from the same schema: Airflow refuses the same value.
    from airflow.sdk.definitions.param import ParamValidationError

    params = airflow_params()
    name, value = next(iter(conf.items()))
    if name in params:
        with pytest.raises(ParamValidationError):
            params[name].resolve(value)


def _lock(path: Path, outs: dict[str, dict[str, str]]) -> None:
    stages = {name: {"cmd": "x", "outs": [{"path": p, "md5": h} for p, h in files.items()]}
              for name, files in outs.items()}  # fmt: skip
    (path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


def test_data_version_follows_dvc_lock_outputs(tmp_path: Path) -> None:
    assert dvc_ops.data_version(tmp_path) is None
    outs = {
        "ingest": {"data/ingested": "a1"},
        "vocab": {"data/vocab": "b1"},
        "pretrain_data": {"data/pretrain": "c1"},
    }
    _lock(tmp_path, outs)
    v1, c1 = dvc_ops.data_version(tmp_path), dvc_ops.corpus_version(tmp_path)
    _lock(tmp_path, outs)
    assert dvc_ops.data_version(tmp_path) == v1  # nothing changed: same version, no Asset event
    outs["ingest"]["data/ingested"] = "a2"
    _lock(tmp_path, outs)
    assert dvc_ops.data_version(tmp_path) != v1
    assert dvc_ops.corpus_version(tmp_path) == c1  # pretraining inputs unchanged
    outs["pretrain_data"]["data/pretrain"] = "c2"
    _lock(tmp_path, outs)
    assert dvc_ops.corpus_version(tmp_path) != c1


def test_pretrain_decision(tmp_path: Path) -> None:
    cfg = load_config(REPO_ROOT / "params.yaml", [f"project.state_dir={tmp_path / 'state'}"])
    assert pretrain_decision(cfg, "skip", "c1", tmp_path)[0] is False
    assert pretrain_decision(cfg, "always", "c1", tmp_path)[0] is True
    needed, why = pretrain_decision(cfg, "auto", "c1", tmp_path)
    assert needed and "no earlier pretraining" in why
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    record_pretraining(cfg, {"run_id": "r1", "bundle_dir": str(bundle)}, "c1", tmp_path)
    needed, why = pretrain_decision(cfg, "auto", "c1", tmp_path)
    assert not needed and "r1" in why
    assert pretrain_decision(cfg, "auto", "c2", tmp_path) == (True, "corpus changed (c1 -> c2)")
    mini = load_config(
        REPO_ROOT / "params.yaml", [f"project.state_dir={tmp_path / 'state'}", "model.preset=mini"]
    )
    assert pretrain_decision(mini, "auto", "c1", tmp_path)[0] is True
    scratch = load_config(
        REPO_ROOT / "params.yaml", [f"project.state_dir={tmp_path / 'state'}", "finetune.init=scratch"]
    )
    assert pretrain_decision(scratch, "auto", "c2", tmp_path)[0] is False


def test_stack_credentials_are_private_and_stable(tmp_path: Path) -> None:
    from bertops.orchestration.airflow_api import read_credentials
    from bertops.orchestration.stack import StackPaths, ensure_secrets

    cfg = load_config(REPO_ROOT / "params.yaml", [f"project.state_dir={tmp_path / '.bertops'}"])
    paths = StackPaths.of(cfg, tmp_path)
    first = ensure_secrets(paths)
    assert ensure_secrets(paths) == first
    for f in (paths.secrets_file, paths.airflow_home / "simple_auth_manager_passwords.json.generated"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert read_credentials(paths.airflow_home) == ("bertops", first["airflow_password"])
    assert json.loads(paths.secrets_file.read_text())["jwt_secret"] == first["jwt_secret"]


def test_check_params_refuses_pretrained_init_with_pretraining_skipped_and_no_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from bertops.orchestration import retrain

    root = tmp_path
    for name in ("params.yaml", "dvc.yaml"):
        (root / name).write_bytes((REPO_ROOT / name).read_bytes())
    conf = {"pretraining": "skip", "init_checkpoint": "pretrained",
            "overrides": [f"pretrain.output_dir={root / 'artifacts/pretrain'}"]}  # fmt: skip
    with pytest.raises(tasks.RetrainRefused, match=r"not a bertops bundle.*scratch"):
        tasks.check_params(conf, root)
    (root / "artifacts/pretrain").mkdir(parents=True)
    (root / "artifacts/pretrain/bertops.json").write_text("{}")
    assert tasks.check_params(conf, root)["overrides"][-1].startswith("pretrain.output_dir=")
    # in the DAG, the refusal fails the run at once (no retries)
    conf["overrides"] = [f"pretrain.output_dir={root / 'nowhere'}"]
    monkeypatch.setenv("BERTOPS_PROJECT_DIR", str(root))
    with pytest.raises(AirflowFailException, match="not a bertops bundle"):
        retrain.check_params(conf)


def test_plan_says_what_a_retrain_will_do() -> None:
    cfg = load_config(REPO_ROOT / "params.yaml", ["finetune.max_steps=20", "ingest.corpus.max_records=5"])
    lines = tasks.plan_lines(cfg, "auto", ["finetune.max_steps=20", "ingest.corpus.max_records=5"], REPO_ROOT)
    text = "\n".join(lines)
    assert "DVC experiment" in text and "ingest.corpus.max_records=5" in text
    assert "pretraining: yes, 2000 steps, ~" in text
    assert "(the data overrides change the pretraining corpus)" in text
    assert "at most 20 steps (~20 steps, ~" in text and "estimate: ~" in text
    # another data set (a folder source here): no step count from the workspace's records, which are not its
    folder = ["ingest.classification.source=folder:data/raw/mine", "finetune.epochs=2"]
    cfg2 = load_config(REPO_ROOT / "params.yaml", folder)
    text2 = "\n".join(tasks.plan_lines(cfg2, "skip", folder, REPO_ROOT))
    assert "2 epochs (steps known once the data is prepared: ingest.classification.source change" in text2
    assert "~" not in text2.split("fine-tuning:")[1].split("\n")[0], text2
    skip = "\n".join(tasks.plan_lines(cfg, "skip", [], REPO_ROOT))
    assert (
        "`dvc repro` of params.yaml" in skip and "pretraining: no (skipped by the run's parameters)" in skip
    )


def test_a_stack_service_keeps_its_port_and_a_taken_one_is_a_clear_error(tmp_path: Path) -> None:
    """The port a service got on its first start is its address from then on (ports.json survives `down`); when
    someone else holds it, `up` stops with who holds it instead of moving the service to another port."""
    import socket

    from bertops.orchestration.stack import PortTaken, StackPaths, stack_port

    paths = StackPaths(root=tmp_path, state=tmp_path / ".bertops")
    first = stack_port(paths, "mlflow", None)
    assert stack_port(paths, "mlflow", None) == first  # remembered, while free
    with socket.socket() as other:  # someone else's server on it
        other.bind(("127.0.0.1", first))
        other.listen()
        with pytest.raises(PortTaken, match=rf"mlflow's port {first} .* is taken by pid {os.getpid()} "):
            stack_port(paths, "mlflow", None)
    assert stack_port(paths, "mlflow", None) == first  # free again: the same address
    assert json.loads(paths.ports_file.read_text()) == {"mlflow": first}
