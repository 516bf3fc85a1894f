"""The NER gate on a real MLflow server: entity micro-F1 against the all-O baseline and the champion, and one
evaluation per candidate (the champion's evaluation on a test file and data version made once, then read back).

Real bertops NER pyfuncs on tiny bundles whose head answers one tag everywhere (tests/model/ner_bundles.py):
``O`` (the all-O model: finds nothing) and ``B-PER`` (every word a person: right on the one-word sentences of
the test set, half right on the two-word ones).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from tests.model.ner_bundles import constant_tag_bundle
from tests.registry.conftest import write_jsonl

from bertops.config import BertopsConfig
from bertops.evaluation.evaluate import evaluate
from bertops.evaluation.result import TAG_MODEL_NAME, TAG_MODEL_VERSION
from bertops.registry import registry as reg
from bertops.registry.promote import promote, run_gate

pytestmark = pytest.mark.slow
DATA_VERSION = "ner-data-v1"


def _register(cfg: BertopsConfig, bundle: Path) -> str:
    import mlflow

    from bertops.model.pyfunc import log_bundle

    mlflow.set_experiment("ner-gate-tests")
    with mlflow.start_run(run_name=f"log-{bundle.name}"):
        uri = log_bundle(bundle).model_uri
    ref = reg.register_candidate(
        uri,
        tracking_uri=cfg.tracking_uri(),
        model_name=cfg.registry.ner_model_name,
        data_version=DATA_VERSION,
    )
    return ref["version"]


def _evaluation_runs(client: object, cfg: BertopsConfig, version: str) -> list[object]:
    experiment = client.get_experiment_by_name(cfg.tracking.evaluation_experiment)
    query = f"tags.`{TAG_MODEL_NAME}` = '{cfg.registry.ner_model_name}' and tags.`{TAG_MODEL_VERSION}` = '{version}'"
    return client.search_runs([experiment.experiment_id], query)


def test_ner_gate_baseline_champion_and_one_evaluation_per_candidate(
    tracking_uri: str, tmp_path: Path
) -> None:
    from bertops.registry.client import connect

    cfg = BertopsConfig.model_validate(
        {
            "tracking": {"uri": tracking_uri, "evaluation_experiment": f"ner-eval-{uuid.uuid4().hex[:6]}"},
            "registry": {"ner_model_name": f"bert-ner-{uuid.uuid4().hex[:6]}"},
            "evaluation": {"latency_repeats": 2},
            "promotion": {"max_latency_ms": 5000},
        }
    )
    client = connect(tracking_uri)
    name = cfg.registry.ner_model_name
    rows = [
        {"tokens": ["anna"], "tags": ["B-PER"]},
        {"tokens": ["smith", "flew"], "tags": ["B-PER", "O"]},
    ] * 5
    test_file = write_jsonl(tmp_path / "test.jsonl", rows)
    all_o = constant_tag_bundle(tmp_path / "all-o", "O")
    per = constant_tag_bundle(tmp_path / "per", "B-PER")

    # 1. The all-O model finds no entity: refused by the baseline check (ner_min_absolute is 0, so only it).
    v1 = _register(cfg, all_o)
    refused = run_gate(cfg, name, v1, test_file)
    assert not refused.passed and [c.name for c in refused.failures] == ["baseline"], refused.reason
    assert "all-O baseline" in refused.reason
    assert reg.get_version(client, name, v1).tags[reg.TAG_GATE] == "failed"

    # 2. The B-PER model beats it (10 entities, 15 predicted, 10 right: F1 0.8) and becomes the first champion.
    v2 = _register(cfg, per)
    first = run_gate(cfg, name, v2, test_file)
    assert first.passed, first.reason
    checks = {c.name: c for c in first.checks}
    assert checks["absolute"].value == pytest.approx(0.8) and checks["baseline"].value == pytest.approx(0.8)
    promote(cfg, name, v2)
    card = client.get_model_version(name, v2).description
    assert "**Task:** ner" in card and "entity_f1" in card
    assert len(_evaluation_runs(client, cfg, v2)) == 1

    # 3. Two later candidates, the first with the evaluation its pipeline made (the gate reads that run), the
    #    second without: the champion (v2) is compared against each time, and never evaluated again.
    v3 = _register(cfg, per)
    made = evaluate(per, test_file, cfg.evaluation, tracking_uri=tracking_uri,
                    experiment=cfg.tracking.evaluation_experiment)  # fmt: skip
    second = run_gate(cfg, name, v3, test_file, evaluation_run_id=made.run_id)
    assert second.passed and second.champion_version == v2, second.reason  # equal F1, min_improvement 0
    assert [r.info.run_id for r in _evaluation_runs(client, cfg, v3)] == [made.run_id]  # no second evaluation
    assert reg.get_version(client, name, v3).tags[reg.TAG_EVAL_RUN] == made.run_id
    v4 = _register(cfg, all_o)
    third = run_gate(cfg, name, v4, test_file)
    assert not third.passed and {"baseline", "improvement"} <= {c.name for c in third.failures}
    assert len(_evaluation_runs(client, cfg, v2)) == 1  # the champion's one evaluation, read back twice
    assert len(_evaluation_runs(client, cfg, v4)) == 1

    # 4. Another data version is another evaluation of the champion.
    fourth = run_gate(cfg, name, v3, test_file, data_version="ner-data-v2")
    assert fourth.passed
    assert len(_evaluation_runs(client, cfg, v2)) == 2
