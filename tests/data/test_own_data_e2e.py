"""A user's own folder-per-label data set, end to end on the real path, as docs/own_data.md tells it.

The test makes a 3-topic data set as ``data/raw/topics/<label>/*.txt`` and a small text corpus in a copy of the
checkout (git + DVC), and edits that project's ``params.yaml`` the way a user would: the folder as the
classification source, ``validate.labels: null``, its own ``registry.model_name``, long texts truncated
``head_tail`` and ``vocab.max_input_chars_per_word: 200``. Then, each through the real command:

1. ``dvc repro finetune_data`` in the git repository: labels found in the folders, in the data report and the
   label map;
2. ``bertops finetune`` (Ray Train on the session's Ray head, a tiny model, a few steps): the bundle holds the
   3 labels and the records' tokenizer settings;
3. ``bertops register --bundle`` and ``bertops promote`` (the gate on the test split, then ``champion``) on the
   session's MLflow server: the version
   carries the DVC data version of ``data/finetune`` (its lineage);
4. bertops' Ray Serve app over HTTP: the served labels are the 3 folder names, and a text with a 150-character
   word gets exactly the probabilities of the bundle loaded locally.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from tests.conftest import copy_dvc_project, ray_env
from tests.serving.conftest import Registry, start_service

from bertops.cli.data import dvc_env
from bertops.data.version import data_version

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LABELS = ["sport", "tech", "world"]
WORDS = {
    "sport": "goal match team coach league score season player win cup",
    "tech": "chip software phone data cloud robot code startup network app",
    "world": "election minister border treaty summit parliament vote war aid capital",
}
LONG_WORD = "x" * 150
SETTINGS = {
    "ingest": {
        "corpus": {"source": "data/raw/corpus.txt", "title_column": None, "max_records": None},
        "classification": {"source": "data/raw/topics", "format": "auto", "exclude_labels": [],
                           "label_mapping": {}, "max_records": None},
        "ner": {"max_records": 80},
    },
    "validate": {"labels": None},
    "vocab": {"vocab_size": 300, "min_frequency": 1, "max_input_chars_per_word": 200},
    "pretrain_data": {"max_seq_length": 32},  # not built here (dvc repro finetune_data), but validated
    "finetune_data": {"max_seq_length": 32, "truncation": "head_tail"},
    "model": {"preset": "custom", "num_layers": 1, "hidden_dim": 32, "num_heads": 2, "intermediate_dim": 64,
              "max_sequence_length": 64, "dropout": 0.0},
    # The gate's thresholds at 0: this checks the path, not a tiny model's quality.
    "evaluation": {"latency_repeats": 2, "worst_examples": 5, "length_buckets": [16]},
    "promotion": {"min_absolute": 0.0, "min_over_majority": 0.0, "max_latency_ms": 100000.0},
    "finetune": {"init": "scratch", "batch_size": 8, "epochs": 1, "max_steps": 6, "checkpoint_every_steps": 100,
                 "log_every_steps": 2},
}  # fmt: skip


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return base


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def make_topics(root: Path, per_label: int = 30) -> None:
    rng = random.Random(7)
    for label in LABELS:
        (root / label).mkdir(parents=True)
        words = WORDS[label].split()
        for i in range(per_label):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + f" story {label} {i}."
            if i == 0:  # a long document: head_tail keeps its start and its end
                text = f"{text}\n\n" + " ".join(rng.choice(words) for _ in range(300)) + " the end."
            if i == 1:
                text = f"{text} {LONG_WORD}"
            (root / label / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    (root / "README.txt").write_text("three topics, one folder each", encoding="utf-8")  # outside the labels


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own_data_project")
    copy_dvc_project(root)
    raw = root / "data" / "raw"
    make_topics(raw / "topics")
    rng = random.Random(3)
    all_words = " ".join(WORDS.values()).split()
    (raw / "corpus.txt").write_text(
        "\n\n".join(
            " ".join(f"{' '.join(rng.choice(all_words) for _ in range(8)).capitalize()}." for _ in range(6))
            for _ in range(40)
        ),
        encoding="utf-8",
    )
    params = _merge(yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8")), SETTINGS)
    params["project"]["state_dir"] = str(root / ".bertops")
    params["registry"]["model_name"] = f"news-topics-{uuid.uuid4().hex[:6]}"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(["git", "init", "-q"], root)
    _run([*git, "add", "-A"], root)
    _run([*git, "commit", "-qm", "my topics"], root)
    return root


def test_folder_dataset_trains_registers_and_serves_its_labels(
    project: Path, ray_cluster, mlflow_server, tmp_path: Path
) -> None:
    from bertops.model.bundle import load_bundle, read_labels, read_meta
    from bertops.serving.client import predict

    # 1. the data pipeline: real dvc repro in the git repository
    _run([sys.executable, "-m", "dvc", "repro", "finetune_data"], project, env=dvc_env())
    report = json.loads((project / "data" / "reports" / "data_report.json").read_text())
    assert report["classification"]["label_set"] == LABELS
    assert report["classification"]["labels_from"] == "data"
    assert report["classification"]["labels"] == dict.fromkeys(LABELS, 30)
    assert any("outside any label folder" in w for w in report["warnings"])
    task_dir = project / "data" / "finetune" / "classification"
    assert json.loads((task_dir / "label_map.json").read_text()) == {"labels": LABELS}
    manifest = json.loads((task_dir / "manifest.json").read_text())
    assert manifest["tokenizer"]["truncation"] == "head_tail"
    assert manifest["tokenizer"]["max_input_chars_per_word"] == 200

    # 2. fine-tuning through the CLI, on the session's Ray head
    sets = [
        "--set", f"tracking.uri={mlflow_server.uri}",
        "--set", f"finetune.scaling.address={ray_cluster.address}",
    ]  # fmt: skip
    env = {**ray_env(), "MLFLOW_TRACKING_URI": mlflow_server.uri}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "400"  # rich would wrap the printed bundle path at 80
    out = _run([str(BIN / "bertops"), "finetune", *sets], project, env=env)
    bundle = Path(next(line.split("bundle:", 1)[1].strip() for line in out.splitlines() if "bundle:" in line))
    bundle = bundle if bundle.is_absolute() else project / bundle
    meta = read_meta(bundle)
    assert read_labels(bundle) == LABELS
    assert (
        meta["tokenizer"]["max_input_chars_per_word"] == 200
        and meta["tokenizer"]["truncation"] == "head_tail"
    )

    # 3. registered under the project's own model name, with the data's DVC version
    name = yaml.safe_load((project / "params.yaml").read_text())["registry"]["model_name"]
    out = _run([str(BIN / "bertops"), "register", "--bundle", str(bundle), *sets], project, env=env)
    ref = json.loads(out.strip().splitlines()[-1])  # MLflow prints its run links first
    version = str(ref["version"])
    _run([str(BIN / "bertops"), "promote", version, *sets], project, env=env)  # gate, then champion
    registry = Registry(tracking_uri=mlflow_server.uri, name=name)
    tags = registry.client().get_model_version(name, version).tags
    # the one data-version format: the version of the lock whose outputs the training read
    assert tags["bertops.data_version"] == data_version(project / "dvc.lock")

    # 4. served over HTTP: the model's labels, and the long word tokenised as in the records
    texts = [f"goal team {LONG_WORD} win", "chip software cloud", "election summit vote"]
    local = load_bundle(bundle).predict_proba(texts)
    for service in start_service(ray_cluster.address, registry):
        assert httpx.get(f"{service.url}/metadata", timeout=30).json()["model"]["labels"] == LABELS
        answer = predict(service.url, texts)
        assert answer["model"] == name and answer["version"] == version
        for pred, expected in zip(answer["predictions"], local, strict=True):
            assert list(pred["probabilities"]) == LABELS
            np.testing.assert_allclose([pred["probabilities"][lab] for lab in LABELS], expected, atol=1e-5)
