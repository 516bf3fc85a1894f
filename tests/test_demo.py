"""The demo's run parameters resolve to the configs they are meant to run (the demo itself starts the whole
stack: `make demo`, `make demo TASK=ner`)."""

from __future__ import annotations

from pathlib import Path

from bertops.config import load_config
from bertops.demo import DEMO_CONF, DEMO_NER_CONF
from bertops.orchestration.retrain_params import conf_to_overrides, validate_conf

REPO = Path(__file__).resolve().parents[1]


def test_demo_confs_resolve() -> None:
    default = load_config(REPO / "params.yaml", conf_to_overrides(validate_conf(DEMO_CONF)))
    ner = load_config(REPO / "params.yaml", conf_to_overrides(validate_conf(DEMO_NER_CONF)))
    assert default.finetune.task == "classification" and default.finetune.max_steps == 320
    assert ner.finetune.task == "ner" and ner.finetune.class_weights == "balanced"
    assert ner.finetune.init == "scratch" and ner.finetune.max_steps == 480
    # Served next to the classifier: the service follows both champions.
    assert ner.registry.ner_model_name in (ner.serving.models or [ner.registry.ner_model_name])
