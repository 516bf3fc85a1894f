"""Overrides are written into params.yaml exactly as asked (a value replaces, dicts and lists whole) and read back.

``dvc exp run --set-param key={}`` merged a mapping into the existing one, so a retrain recorded
``label_mapping={}`` while its ingest stage still mapped the labels. bertops now writes the experiment's params
itself (:func:`bertops.orchestration.dvc_ops.write_overrides`) and refuses the run, before any stage, when what the
stages would read differs from what was asked (:func:`~bertops.orchestration.dvc_ops.check_overrides_applied`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from bertops.config import load_config
from bertops.orchestration import dvc_ops

REPO_ROOT = Path(__file__).resolve().parents[2]

CASES = [
    "ingest.classification.label_mapping={}",  # an empty dict over a non-empty default
    "ingest.ner.label_mapping={PER: person}",  # a non-empty dict over an empty default
    "ingest.classification.label_mapping={fresh: good}",  # a non-empty dict over a non-empty default
    "ingest.classification.exclude_labels=[plot, other]",  # a list
    "ingest.classification.max_records=null",  # null
    "ingest.corpus.language=de",  # a nested key
]


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy2(REPO_ROOT / "params.yaml", path)
    return path


@pytest.mark.parametrize("override", CASES)
def test_each_override_is_applied_as_asked(params: Path, override: str) -> None:
    dvc_ops.write_overrides(params, [override])
    dvc_ops.check_overrides_applied(params, [override])
    key, raw = override.split("=", 1)
    node = load_config(params).model_dump()
    for part in key.split("."):
        node = node[part]
    assert node == yaml.safe_load(raw)


def test_only_the_overridden_keys_change(params: Path) -> None:
    before = yaml.safe_load(params.read_text(encoding="utf-8"))
    dvc_ops.write_overrides(params, ["ingest.classification.label_mapping={fresh: good}"])
    after = yaml.safe_load(params.read_text(encoding="utf-8"))
    assert after["ingest"]["classification"]["label_mapping"] == {"fresh": "good"}
    after["ingest"]["classification"]["label_mapping"] = before["ingest"]["classification"]["label_mapping"]
    assert after == before


def test_a_merged_mapping_is_refused_naming_the_key(params: Path) -> None:
    """What DVC's --set-param wrote for ``label_mapping={}``: the old mapping, kept. The read-back refuses it."""
    with pytest.raises(dvc_ops.OverrideNotApplied) as err:
        dvc_ops.check_overrides_applied(
            params, ["ingest.classification.label_mapping={}", "vocab.vocab_size=8000"]
        )
    message = str(err.value)
    assert "ingest.classification.label_mapping: asked {}" in message and '"fresh": "positive"' in message
    assert "vocab.vocab_size" not in message  # applied: not named


def test_a_missing_key_is_refused(params: Path) -> None:
    with pytest.raises(
        dvc_ops.OverrideNotApplied,
        match=re.escape("ingest.classification.nope: asked 3, params.yaml has <missing>"),
    ):
        dvc_ops.check_overrides_applied(params, ["ingest.classification.nope=3"])
