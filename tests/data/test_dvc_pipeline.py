"""Integration: the real ``dvc repro`` in a temporary git repository with a small config.

One repository per module: the first run builds everything, later tests change one thing each and check what
DVC re-ran, then every bad-input case checks that the run fails with an error naming the file and row (or
key) and that no earlier output changed (``persist: true`` outs + atomic writes).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import copy_dvc_project

from bertops.cli.data import dvc_env

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS: list[str] = []  # every stage
SMALL = {
    "ingest.corpus.max_records": 40,
    "ingest.classification.max_records": 300,
    "ingest.ner.max_records": 150,
    "vocab.vocab_size": 300,
    "vocab.min_frequency": 1,
    "pretrain_data.dupe_factor": 1,
    "pretrain_data.max_seq_length": 64,
    "pretrain_data.num_workers": 1,
    "finetune_data.max_seq_length": 64,
}
STAGE_OUTS = {
    "ingest": ["data/ingested"],
    "validate": ["data/reports"],
    "split": ["data/split"],
    "vocab": ["data/vocab"],
    "pretrain_data": ["data/pretrain"],
    "finetune_data": ["data/finetune"],
}
STAGES = list(STAGE_OUTS)

pytestmark = pytest.mark.slow


@dataclass
class DvcRepo:
    root: Path
    params: dict[str, Any] = field(default_factory=dict)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", *args],
            cwd=self.root,
            env=dvc_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def repro(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.dvc("repro", *TARGETS, *extra, check=check)

    def write_params(self, changes: dict[str, Any] | None = None, raw: str | None = None) -> None:
        """Write params.yaml: the small base config with ``changes`` (dotted keys) applied."""
        data = yaml.safe_load(yaml.safe_dump(self.params))
        for dotted, value in (changes or {}).items():
            node = data
            *parents, last = dotted.split(".")
            for p in parents:
                node = node[p]
            node[last] = value
        text = yaml.safe_dump(data, sort_keys=False)
        (self.root / "params.yaml").write_text(text + (raw or ""), encoding="utf-8")

    def snapshot(self, stages: list[str] | None = None) -> dict[str, tuple[str, int]]:
        """sha256 and mtime of every output file of ``stages`` (default all)."""
        out: dict[str, tuple[str, int]] = {}
        for stage in stages or STAGES:
            for top in STAGE_OUTS[stage]:
                base = self.root / top
                for p in sorted(base.rglob("*")) if base.exists() else []:
                    if p.is_file() and p.name != ".gitignore":
                        out[str(p.relative_to(self.root))] = (
                            hashlib.sha256(p.read_bytes()).hexdigest(),
                            p.stat().st_mtime_ns,
                        )
        return out


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DvcRepo]:
    root = tmp_path_factory.mktemp("dvcrepo")
    copy_dvc_project(root)
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "data" / "raw" / "README.md", root / "data" / "raw" / "README.md")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    r = DvcRepo(root, params)
    r.write_params(SMALL)
    r.params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    _run(["git", "init", "-q"], root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root)
    r.repro()
    yield r


def test_repro_builds_every_output_and_splits_never_cross(repo: DvcRepo) -> None:
    import json

    from bertops.data.validate import normalise_text

    snap = repo.snapshot()
    for rel in (
        "data/ingested/corpus.jsonl",
        "data/reports/data_report.json",
        "data/reports/data_report.html",
        "data/split/classification/test.jsonl",
        "data/split/corpus/heldout.jsonl",
    ):
        assert rel in snap, rel
    report = json.loads((repo.root / "data/reports/data_report.json").read_text())
    assert report["status"] == "passed" and report["classification"]["records"] == 300
    for task, text_of in (("classification", lambda r: r["text"]), ("ner", lambda r: " ".join(r["tokens"]))):
        where: dict[str, str] = {}
        total = 0
        for split in ("train", "validation", "test"):
            lines = (repo.root / f"data/split/{task}/{split}.jsonl").read_text().splitlines()
            assert lines, (task, split)
            total += len(lines)
            for line in lines:
                assert where.setdefault(normalise_text(text_of(json.loads(line))), split) == split
        assert total == report[task]["records"]
    metrics = repo.dvc("metrics", "show", "--json").stdout
    assert '"status": "passed"' in metrics or "passed" in metrics


def test_noop_repro_changes_nothing(repo: DvcRepo) -> None:
    before = repo.snapshot()
    out = repo.repro().stdout
    assert "Running stage" not in out
    assert repo.snapshot() == before  # not even mtimes
    status = repo.dvc("status", *TARGETS, "--with-deps" if TARGETS else "-q").stdout
    assert "up to date" in status or status.strip() == ""


def test_changed_param_reruns_only_dependent_stages(repo: DvcRepo) -> None:
    # The last stage's own param: only that stage runs.
    key, value, stage = ("finetune_data.max_seq_length", 48, "finetune_data")
    before = repo.snapshot()
    repo.write_params({key: value})
    out = repo.repro().stdout
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == [
        f"Running stage '{stage}':"
    ]
    after = repo.snapshot()
    others = [s for s in STAGES if s != stage]
    assert {k: after[k] for k in repo.snapshot(others)} == {k: before[k] for k in repo.snapshot(others)}
    assert any(after[k] != before[k] for k in repo.snapshot([stage]))
    # A validate-only param re-runs validate; its report is unchanged, so split (and the rest) do not run again.
    repo.write_params({key: value, "validate.max_text_chars": 5000})
    out = repo.repro().stdout
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'validate':"
    ]
    repo.write_params()  # back to the base params (the next repro re-runs the changed stage)


def test_push_and_pull_with_the_default_local_remote(repo: DvcRepo) -> None:
    repo.dvc("push", *TARGETS, *(["--with-deps"] if TARGETS else []))
    remote = repo.root / ".bertops" / "dvc-remote"
    assert any(p.is_file() for p in remote.rglob("*"))
    target = repo.root / "data/split/classification/train.jsonl"
    content = target.read_bytes()
    target.unlink()
    shutil.rmtree(repo.root / ".dvc" / "cache")
    repo.dvc("pull", *TARGETS, *(["--with-deps"] if TARGETS else []))
    assert target.read_bytes() == content


# ------------------------------------------------------------------------------------------------ bad input
@dataclass(frozen=True)
class Bad:
    """One bad-input case: what to change, where it fails, what the message must say."""

    params: dict[str, Any]
    expect: tuple[str, ...]
    keeps: str  # outputs of this stage and all later ones must stay untouched (ingest: every output)
    files: dict[str, bytes] = field(default_factory=dict)
    raw: str | None = None
    extra: tuple[str, ...] = ()


def cls_source(name: str, **kw: Any) -> dict[str, Any]:
    base = {
        "ingest.classification.source": f"data/raw/{name}",
        "ingest.classification.label_column": "label",
        "ingest.classification.exclude_labels": [],
        "ingest.classification.label_mapping": {},
        "ingest.classification.max_records": None,
    }
    return base | {f"ingest.classification.{k}": v for k, v in kw.items()}


def rows(n: int, label: Callable[[int], str] = lambda i: "positive" if i % 2 else "negative") -> bytes:
    return ("text,label\n" + "".join(f"review number {i} is here,{label(i)}\n" for i in range(n))).encode()


BAD = {
    "missing-file": Bad(cls_source("nope.csv"), ("data/raw/nope.csv", "does not exist"), "ingest"),
    "empty-file": Bad(
        cls_source("empty.csv"),
        ("data/raw/empty.csv", "input file is empty"),
        "ingest",
        files={"empty.csv": b""},
    ),
    "missing-column": Bad(
        cls_source("r.csv", label_column="sentiment"),
        ("data/raw/r.csv", "field 'sentiment'", "not found"),
        "ingest",
        files={"r.csv": rows(20)},
    ),
    "not-utf8": Bad(
        cls_source("latin.csv"),
        ("data/raw/latin.csv", "line 4", "not valid utf-8"),
        "ingest",
        files={"latin.csv": rows(2) + b"caf\xe9 review,positive\n"},
    ),
    "empty-text": Bad(
        cls_source("blank.csv")
        | {
            "ingest.drop_empty": False,
            "ingest.corpus.source": "data/raw/c.txt",
            "ingest.corpus.title_column": None,
        },
        ("data/raw/blank.csv", "row 3", "field 'text'", "empty or whitespace-only"),
        "ingest",
        files={"blank.csv": rows(2) + b"   ,positive\n", "c.txt": b"One doc. Two.\n\nAnother.\n"},
    ),
    "unterminated-quote": Bad(
        cls_source("quote.csv"),
        ("data/raw/quote.csv", "row 3", "unterminated quote", "opened on line 4"),
        "ingest",
        files={"quote.csv": rows(2) + b'"never closed,positive\n' + rows(3).split(b"\n", 1)[1]},
    ),
    "jsonl-text-not-a-string": Bad(
        cls_source("n.jsonl"),
        ("data/raw/n.jsonl", "row 2", "field 'text'", "expected a string, got int 5"),
        "ingest",
        files={"n.jsonl": b'{"text": "fine", "label": "positive"}\n{"text": 5, "label": "negative"}\n'},
    ),
    "label-outside-set": Bad(
        cls_source("neutral.csv"),
        ("data/raw/neutral.csv", "row 21", "field 'label'", "'neutral' is not one of"),
        "validate",
        files={"neutral.csv": rows(20) + b"so-so,neutral\n"},
    ),
    "single-class": Bad(
        cls_source("one.csv"),
        ("classification.jsonl", "single-class dataset"),
        "validate",
        files={"one.csv": rows(20, lambda i: "positive")},
    ),
    "conflicting-labels": Bad(
        cls_source("conflict.csv"),
        ("data/raw/conflict.csv", "row 21", "conflicting labels", "row 4"),
        "validate",
        files={"conflict.csv": rows(20) + b"Review number 3 is here,negative\n"},
    ),
    "max-seq-above-position-limit": Bad(
        {"pretrain_data.max_seq_length": 1024, "model.max_sequence_length": 512},
        ("pretrain_data.max_seq_length=1024", "max_sequence_length=512"),
        "ingest",
    ),
    # A config error stops whichever stage runs first (each validates the whole config): nothing changes.
    "unknown-key": Bad({}, ("split.sed", "unknown key"), "ingest"),
    "wrong-type": Bad({"split.seed": "abc"}, ("split.seed", "integer"), "ingest"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_fails_naming_where_and_keeps_outputs(repo: DvcRepo, case: str) -> None:
    bad = BAD[case]
    for name, content in bad.files.items():
        (repo.root / "data" / "raw" / name).write_bytes(content)
    later = STAGES[STAGES.index(bad.keeps) :]
    before = repo.snapshot(later)
    try:
        if case == "unknown-key":
            repo.params["split"]["sed"] = 3
            repo.write_params()
            del repo.params["split"]["sed"]
        else:
            repo.write_params(bad.params)
        # Every stage validates the whole config; --force makes the run happen when no dep of it changed.
        args = ["repro", *bad.extra] if bad.extra else ["repro", *TARGETS]
        proc = repo.dvc(*args, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        for text in bad.expect:
            assert text in output, f"{text!r} not in:\n{output}"
        assert "Running stage 'split'" not in output or bad.extra  # no stage after the failure ran
        assert repo.snapshot(later) == before  # nothing the failing stage or any later one wrote survived
    finally:
        repo.write_params()
        for name in bad.files:
            (repo.root / "data" / "raw" / name).unlink()


def test_vocab_size_too_small_for_special_tokens(repo: DvcRepo) -> None:
    before = repo.snapshot(["vocab", "pretrain_data", "finetune_data"])
    try:
        repo.write_params({"vocab.vocab_size": 3})
        proc = repo.dvc("repro", "vocab", check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "vocab_size" in output, output
        assert repo.snapshot(["vocab", "pretrain_data", "finetune_data"]) == before
    finally:
        repo.write_params()
