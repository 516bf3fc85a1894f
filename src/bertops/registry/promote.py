"""Gate, promote and roll back registered versions: the functions the CLI and the Airflow DAG call.

    decision = run_gate(cfg, "bert-sentiment", "4", test_file="data/split/classification/test.jsonl")
    promote(cfg, "bert-sentiment", "4")        # {"name", "version", "changed", "champion", "previous_champion"}
    rollback(cfg, "bert-sentiment")            # champion back to previous-champion

How a promotion stays correct when retried or raced:

- The gate records on the version which champion it compared against (``bertops.gate_champion``).
- :func:`promote` takes the registry-level :class:`~bertops.registry.lock.PromotionLock`, then re-reads the
  ``champion`` alias. Already this version: nothing changes (idempotent retry). A different champion than the
  gate saw: :class:`PromotionConflict` (another promotion won; re-run the gate against the new champion).
- The move is ``previous-champion`` := old champion, then ``champion`` := candidate: the alias that serving reads
  changes in one call, and a crash between the two leaves both aliases on the old champion (still valid).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertops.data.errors import DataError
from bertops.evaluation.errors import LabelMapMismatch
from bertops.evaluation.evaluate import evaluate_version, version_key
from bertops.evaluation.result import TAG_TEST_SHA, EvaluationResult, result_of_run
from bertops.registry import registry as reg
from bertops.registry.errors import PromotionConflict, RegistryError
from bertops.registry.gate import FAILED, PASSED, PENDING, Check, GateDecision, GateThresholds, decide
from bertops.registry.lock import PromotionLock
from bertops.registry.model_card import render_model_card
from bertops.tracking_client import connect

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from bertops.config import BertopsConfig

logger = logging.getLogger(__name__)
NO_CHAMPION = "none"
APPROVED, REJECTED = "approved", "rejected"


def _needs_approval(cfg: BertopsConfig) -> bool:
    return cfg.promotion.require_approval or cfg.promotion.mode == "require_approval"


def _candidate_evaluation(
    cfg: BertopsConfig,
    client: MlflowClient,
    name: str,
    version: str,
    test_file: Path,
    data_version: str | None,
    evaluation_run_id: str | None,
) -> EvaluationResult:
    """The candidate's evaluation: the run the pipeline's ``evaluate`` step made (tagged now as this version's,
    so it is found again when the version is champion), or, without one, an evaluation made or found here."""
    key = version_key(name, version, test_file, data_version)
    if evaluation_run_id:
        result = result_of_run(client, evaluation_run_id)
        if result.test_sha256 == key[TAG_TEST_SHA]:
            for tag, value in key.items():
                client.set_tag(evaluation_run_id, tag, value)
            logger.info("%s v%s: the gate reads evaluation run %s", name, version, evaluation_run_id)
            return result
        logger.warning(
            "evaluation run %s was made on other test data (sha256 %s, not %s of %s): evaluating %s v%s again",
            evaluation_run_id, result.test_sha256, key[TAG_TEST_SHA], test_file, name, version,
        )  # fmt: skip
    return _evaluate_version(cfg, name, version, test_file, data_version, "candidate")


def _evaluate_version(
    cfg: BertopsConfig, name: str, version: str, test_file: Path, data_version: str | None, role: str
) -> EvaluationResult:
    return evaluate_version(
        name,
        version,
        test_file,
        cfg.evaluation,
        tracking_uri=cfg.tracking_uri(),
        experiment=cfg.tracking.evaluation_experiment,
        data_version=data_version,
        role=role,
    )


def run_gate(
    cfg: BertopsConfig,
    name: str,
    version: str,
    test_file: str | Path,
    output_dir: str | Path | None = None,
    *,
    evaluation_run_id: str | None = None,
    data_version: str | None = None,
) -> GateDecision:
    """Decide on ``version`` against the current champion, both evaluated on ``test_file``, and record it.

    One evaluation per candidate: ``evaluation_run_id`` is the candidate's evaluation run (the retrain's
    ``evaluate`` step); without it the candidate is evaluated here. The champion's evaluation on the same test
    file and data version (``data_version``, default the version's ``bertops.data_version`` tag) is made once
    and read back from its evaluation run afterwards (:func:`bertops.evaluation.evaluate.evaluate_version`).
    The version gets the tags ``bertops.gate`` (passed / failed / pending-approval), ``bertops.gate_reason``,
    ``bertops.gate_champion`` and ``bertops.evaluation_run_id``, and its model card gains the metrics next to
    the champion's and the gate section. An evaluation that fails marks the gate ``failed`` and re-raises.
    ``output_dir``: also write the candidate's DVC metrics/plots files there.
    """
    client = connect(cfg.tracking_uri())
    version = str(version)
    mv = reg.get_version(client, name, version)
    data_version = data_version or mv.tags.get(reg.TAG_DATA)
    champion = reg.alias_version(client, name, reg.CHAMPION)
    if champion == version:  # a retried gate after a successful promotion: nothing to re-decide
        check = Check("already-champion", True, None, None, f"v{version} is already the champion")
        return GateDecision(True, [check], champion_version=champion, candidate_version=version)
    test_file = Path(test_file)
    try:
        cand = _candidate_evaluation(cfg, client, name, version, test_file, data_version, evaluation_run_id)
        champ = (
            _evaluate_version(cfg, name, champion, test_file, data_version, "champion") if champion else None
        )
        if champ is not None and champ.labels != cand.labels:
            raise RegistryError(
                f"{name} v{version} has labels {cand.labels} but champion v{champion} has "
                f"{champ.labels}: they cannot be compared"
            )
    except (LabelMapMismatch, DataError):
        raise  # bad test data is not the candidate's fault: the version is left as it was
    except Exception as exc:
        reg.set_tags(
            client, name, version, {reg.TAG_GATE: FAILED, reg.TAG_GATE_REASON: f"evaluation failed: {exc}"}
        )
        raise
    decision = decide(
        cand.metrics,
        champ.metrics if champ else None,
        GateThresholds.from_config(cfg.promotion, cand.task),
        candidate_version=version,
        champion_version=champion,
    )
    status = decision.status
    if decision.passed and _needs_approval(cfg):
        status = PENDING
    reg.set_tags(
        client,
        name,
        version,
        {
            reg.TAG_GATE: status,
            reg.TAG_GATE_REASON: decision.reason,
            reg.TAG_GATE_CHAMPION: champion or NO_CHAMPION,
            reg.TAG_EVAL_RUN: cand.run_id,
            reg.TAG_TEST_SHA: cand.test_sha256,
        },
    )
    info = reg.card_info(client, name, version)
    info.task = cand.task
    info.labels = cand.labels
    info.metrics = cand.metrics
    info.champion_version = champion
    info.champion_metrics = champ.metrics if champ else None
    info.gate_status = status
    info.gate_reasons = [f"{'✅' if c.passed else '❌'} {c.name}: {c.detail}" for c in decision.checks]
    client.update_model_version(name, version, description=render_model_card(info))
    if output_dir is not None:
        _write_dvc_files(cand, output_dir)
    logger.info("gate for %s v%s vs champion %s: %s (%s)", name, version, champion, status, decision.reason)
    return decision


def _write_dvc_files(result: EvaluationResult, output_dir: str | Path) -> None:
    """Copy the candidate's logged evaluation artifacts to ``output_dir`` (the DVC metrics/plots files)."""
    import shutil
    import tempfile

    import mlflow

    from bertops.data.io import atomic_dir

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=result.run_id, artifact_path="evaluation", dst_path=tmp
        )
        with atomic_dir(output_dir) as staged:
            shutil.copytree(local, staged, dirs_exist_ok=True)


def wait_for_approval(
    client: MlflowClient, name: str, version: str, timeout_s: float, poll_s: float = 5.0
) -> str:
    """Poll the version's ``approval`` tag until a reviewer sets it; returns approved / rejected / timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = reg.get_version(client, name, version).tags.get(reg.TAG_APPROVAL, "").strip().lower()
        if value in (APPROVED, REJECTED):
            return value
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _check_promotable(client: MlflowClient, cfg: BertopsConfig, name: str, version: str, wait: bool) -> str:
    """The champion the gate compared against; raises :class:`RegistryError` when the version may not move."""
    if cfg.promotion.mode == "never":
        raise RegistryError("promotion.mode is 'never': gates run, champions are moved by hand only")
    tags = dict(reg.get_version(client, name, version).tags)
    gate = tags.get(reg.TAG_GATE)
    if gate is None:
        raise RegistryError(
            f"{name} v{version} has not been through the gate; run `bertops promote --gate` first"
        )
    if gate == FAILED:
        raise RegistryError(
            f"{name} v{version} failed its gate: {tags.get(reg.TAG_GATE_REASON, 'no reason recorded')}"
        )
    approval = tags.get(reg.TAG_APPROVAL, "").strip().lower()
    if approval == REJECTED:
        raise RegistryError(f"{name} v{version} was rejected by a reviewer (tag approval=rejected)")
    if gate == PENDING and approval != APPROVED:
        if not wait:
            raise RegistryError(
                f"{name} v{version} passed the gate but waits for approval: a reviewer sets the "
                f"tag approval=approved on the version in the MLflow UI"
            )
        outcome = wait_for_approval(client, name, version, cfg.promotion.approval_timeout_s)
        if outcome != APPROVED:
            raise RegistryError(
                f"{name} v{version}: approval {outcome} after {cfg.promotion.approval_timeout_s}s"
            )
    elif gate not in (PASSED, PENDING):
        raise RegistryError(f"{name} v{version} has an unknown gate status {gate!r}")
    return tags.get(reg.TAG_GATE_CHAMPION, NO_CHAMPION)


def promote(
    cfg: BertopsConfig, name: str, version: str, wait_for_review: bool = False, lock_timeout_s: float = 120.0
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` when its gate passed (and a reviewer approved, if required).

    Idempotent: promoting the current champion again returns ``changed=False``. Raises
    :class:`PromotionConflict` when the champion changed since the gate ran, :class:`RegistryError` when the
    version failed the gate, was rejected or does not exist. The registry is unchanged on every error.
    """
    client = connect(cfg.tracking_uri())
    version = str(version)
    expected = _check_promotable(client, cfg, name, version, wait_for_review)
    with PromotionLock(client, name, timeout_s=lock_timeout_s):
        current = reg.alias_version(client, name, reg.CHAMPION)
        if current == version:
            logger.info("%s v%s is already the champion: nothing to do", name, version)
            return {
                "name": name,
                "version": version,
                "changed": False,
                "champion": version,
                "previous_champion": reg.alias_version(client, name, reg.PREVIOUS),
            }
        if (current or NO_CHAMPION) != expected:
            raise PromotionConflict(
                f"the champion of {name} is v{current} but the gate of v{version} compared against "
                f"{'v' + expected if expected != NO_CHAMPION else 'no champion'}; another promotion won. "
                "Re-run the gate against the current champion"
            )
        if current is not None:
            client.set_registered_model_alias(name, reg.PREVIOUS, current)
        client.set_registered_model_alias(name, reg.CHAMPION, version)
        reg.set_tags(
            client,
            name,
            version,
            {
                reg.TAG_PREVIOUS: current or NO_CHAMPION,
                reg.TAG_PROMOTED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        if reg.alias_version(client, name, reg.CHALLENGER) == version:
            client.delete_registered_model_alias(name, reg.CHALLENGER)
    logger.info("promoted %s v%s to champion (previous champion: %s)", name, version, current)
    return {
        "name": name,
        "version": version,
        "changed": True,
        "champion": version,
        "previous_champion": current,
    }


def rollback(
    cfg: BertopsConfig, name: str, to_version: str | None = None, lock_timeout_s: float = 120.0
) -> dict[str, Any]:
    """Point ``champion`` back at ``previous-champion`` (or at ``to_version``) under the promotion lock.

    The restored version's own predecessor (its ``bertops.previous_champion`` tag) becomes the new
    ``previous-champion``, so repeated rollbacks walk back through the promotion history. Returns
    ``{"name", "champion", "rolled_back", "previous_champion"}``.
    """
    client = connect(cfg.tracking_uri())
    if to_version is not None:
        reg.get_version(client, name, str(to_version))
    with PromotionLock(client, name, timeout_s=lock_timeout_s):
        current = reg.alias_version(client, name, reg.CHAMPION)
        target = str(to_version) if to_version else reg.alias_version(client, name, reg.PREVIOUS)
        if target is None:
            raise RegistryError(f"{name} has no previous-champion to roll back to; pass a version explicitly")
        if target == current:
            raise RegistryError(f"{name} v{target} is already the champion")
        before = reg.get_version(client, name, target).tags.get(reg.TAG_PREVIOUS)
        client.set_registered_model_alias(name, reg.CHAMPION, target)
        if before and before not in (NO_CHAMPION, target):
            client.set_registered_model_alias(name, reg.PREVIOUS, before)
        elif reg.alias_version(client, name, reg.PREVIOUS) is not None:
            client.delete_registered_model_alias(name, reg.PREVIOUS)
        if current is not None:
            reg.set_tags(
                client,
                name,
                current,
                {reg.TAG_ROLLED_BACK_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            )
    new_prev = reg.alias_version(client, name, reg.PREVIOUS)
    logger.info("rolled %s back from v%s to v%s", name, current, target)
    return {"name": name, "champion": target, "rolled_back": current, "previous_champion": new_prev}
