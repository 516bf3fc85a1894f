"""Promotion, rollback, idempotency and races against a real MLflow server (no models needed: versions only).

The gate's outcome is written as the tags ``run_gate`` writes, so these tests exercise the registry mechanics
(aliases, the lock, the champion re-check) on their own; test_gate_e2e.py runs the real gate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.registry.helpers import aliases, gate_passed, make_model

from bertops.config import BertopsConfig, TrackingConfig
from bertops.registry import registry as reg
from bertops.registry.errors import PromotionConflict, RegistryError, TrackingUnavailable
from bertops.registry.promote import promote, rollback

pytestmark = pytest.mark.slow


@pytest.fixture
def cfg(tracking_uri: str) -> BertopsConfig:
    return BertopsConfig(tracking=TrackingConfig(uri=tracking_uri))


def test_first_promotion_idempotent_retry_then_rollback(cfg: BertopsConfig, tmp_path: Path) -> None:
    name, client = make_model(cfg.tracking_uri(), 2)
    gate_passed(client, name, "1", None)
    first = promote(cfg, name, "1")
    assert first == {
        "name": name,
        "version": "1",
        "changed": True,
        "champion": "1",
        "previous_champion": None,
    }
    assert promote(cfg, name, "1")["changed"] is False  # retried promotion: nothing changes
    assert aliases(client, name) == {"champion": "1"}

    gate_passed(client, name, "2", "1")
    second = promote(cfg, name, "2")
    assert second["changed"] and second["previous_champion"] == "1"
    assert aliases(client, name) == {"champion": "2", "previous-champion": "1"}
    assert client.get_model_version(name, "2").tags[reg.TAG_PREVIOUS] == "1"

    back = rollback(cfg, name)
    assert back == {"name": name, "champion": "1", "rolled_back": "2", "previous_champion": None}
    assert aliases(client, name) == {"champion": "1"}
    assert reg.TAG_ROLLED_BACK_AT in client.get_model_version(name, "2").tags
    with pytest.raises(RegistryError, match="no previous-champion"):
        rollback(cfg, name)


def test_failed_stale_and_unknown_versions_leave_the_registry_as_it_was(
    cfg: BertopsConfig, tmp_path: Path
) -> None:
    name, client = make_model(cfg.tracking_uri(), 3)
    gate_passed(client, name, "1", None)
    promote(cfg, name, "1")
    reg.set_tags(client, name, "2", {reg.TAG_GATE: "failed", reg.TAG_GATE_REASON: "accuracy 0.5 < 0.6"})
    with pytest.raises(RegistryError, match=r"v2 failed its gate: accuracy 0.5 < 0.6"):
        promote(cfg, name, "2")
    with pytest.raises(RegistryError, match="has not been through the gate"):
        promote(cfg, name, "3")
    gate_passed(client, name, "3", "2")  # gated against a champion that is not the champion
    with pytest.raises(PromotionConflict, match="another promotion won"):
        promote(cfg, name, "3")
    with pytest.raises(RegistryError, match="has no version '9'"):
        promote(cfg, name, "9")
    with pytest.raises(RegistryError, match="'no-such-model' does not exist"):
        promote(cfg, "no-such-model", "1")
    assert aliases(client, name) == {"champion": "1"}
    assert not any(m.name.endswith(".promotion-lock") for m in client.search_registered_models())


def test_pending_approval_waits_for_the_reviewer_tag(cfg: BertopsConfig, tmp_path: Path) -> None:
    name, client = make_model(cfg.tracking_uri(), 1)
    reg.set_tags(client, name, "1", {reg.TAG_GATE: "pending-approval", reg.TAG_GATE_CHAMPION: "none"})
    with pytest.raises(RegistryError, match="waits for approval"):
        promote(cfg, name, "1")
    cfg.promotion.approval_timeout_s = 1
    with pytest.raises(RegistryError, match="approval timeout"):
        promote(cfg, name, "1", wait_for_review=True)
    client.set_model_version_tag(name, "1", "approval", "approved")
    assert promote(cfg, name, "1", wait_for_review=True)["changed"]


WORKER = """
import json, sys
from bertops.config import BertopsConfig, TrackingConfig
from bertops.registry.promote import promote
uri, name, version = sys.argv[1:4]
cfg = BertopsConfig(tracking=TrackingConfig(uri=uri))
print("ready", flush=True)
sys.stdin.readline()  # the go signal: every worker has imported everything and calls promote at once
try:
    print(json.dumps({"ok": promote(cfg, name, version)}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def race(uri: str, name: str, versions: list[str], repo_root: Path) -> list[dict]:
    """Run ``promote`` for each version in its own process, released together once all are ready."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, name, v],
            cwd=repo_root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in versions
    ]
    for p in procs:
        line = p.stdout.readline()
        assert line.strip() == "ready", (line, p.stderr.read()[-2000:] if p.poll() is not None else "")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_concurrent_promotions_exactly_one_wins(cfg: BertopsConfig, tmp_path: Path, repo_root: Path) -> None:
    name, client = make_model(cfg.tracking_uri(), 3)
    gate_passed(client, name, "1", None)
    promote(cfg, name, "1")
    gate_passed(client, name, "2", "1")
    gate_passed(client, name, "3", "1")  # both gated against champion v1: only one may replace it

    results = race(cfg.tracking_uri(), name, ["2", "3", "2"], repo_root)
    winners = [r["ok"]["version"] for r in results if "ok" in r and r["ok"]["changed"]]
    assert len(winners) == 1, results
    champion = aliases(client, name)["champion"]
    assert champion == winners[0]
    assert aliases(client, name)["previous-champion"] == "1"
    for r in results:
        if "error" in r:
            assert r["error"] == "PromotionConflict", r
        elif not r["ok"]["changed"]:
            assert r["ok"]["version"] == champion  # the same version retried: an idempotent no-op
    assert not any(m.name.endswith(".promotion-lock") for m in client.search_registered_models())


def test_unreachable_tracking_server_is_a_clear_error() -> None:
    from tests.conftest import free_port

    cfg = BertopsConfig(tracking=TrackingConfig(uri=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(TrackingUnavailable, match="unreachable"):
        promote(cfg, "bert-sentiment", "1")


def test_embedded_sqlite_store_promotes_and_races_safely(
    tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default embedded store (a SQLite file, no server): the same lock and champion re-check hold."""
    # mlflow.set_tracking_uri() (earlier tests) exports MLFLOW_TRACKING_URI; the default must not see it.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = BertopsConfig(project={"state_dir": str(tmp_path / "state")})
    uri = cfg.tracking_uri()
    assert uri.startswith("sqlite:///") and str(tmp_path) in uri
    name, client = make_model(uri, 3)
    gate_passed(client, name, "1", None)
    assert promote(cfg, name, "1")["changed"]
    gate_passed(client, name, "2", "1")
    gate_passed(client, name, "3", "1")
    results = race(uri, name, ["2", "3"], repo_root)
    winners = [r["ok"]["version"] for r in results if "ok" in r and r["ok"]["changed"]]
    assert len(winners) == 1 and [r["error"] for r in results if "error" in r] == ["PromotionConflict"], (
        results
    )
    assert aliases(client, name) == {"champion": winners[0], "previous-champion": "1"}
    assert rollback(cfg, name)["champion"] == "1"


def test_cli_promote_rollback_and_models(cfg: BertopsConfig, repo_root: Path) -> None:
    from typer.testing import CliRunner

    from bertops.cli import app

    name, client = make_model(cfg.tracking_uri(), 2)
    gate_passed(client, name, "1", None)
    reg.set_tags(client, name, "2", {reg.TAG_GATE: "failed", reg.TAG_GATE_REASON: "macro_f1 too low"})
    common = [
        "--params",
        str(repo_root / "params.yaml"),
        "--set",
        f"tracking.uri={cfg.tracking_uri()}",
        "--name",
        name,
    ]
    runner = CliRunner()
    ok = runner.invoke(app, ["promote", "1", "--no-gate", *common])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.strip().splitlines()[-1])["changed"] is True
    refused = runner.invoke(app, ["promote", "2", "--no-gate", *common])
    assert refused.exit_code == 1 and "failed its gate: macro_f1 too low" in refused.output
    listing = runner.invoke(app, ["models", *common])
    assert listing.exit_code == 0 and "champion" in listing.stdout and "failed" in listing.stdout
    nothing = runner.invoke(app, ["rollback", *common])
    assert nothing.exit_code == 1 and "no previous-champion" in nothing.output
    assert aliases(client, name) == {"champion": "1"}
