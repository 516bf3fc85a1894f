"""Atomic writes, the pipeline summary and the ``bertops data`` commands (without running DVC)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bertops.cli import app
from bertops.data.io import atomic_dir, atomic_open, read_jsonl, write_jsonl
from bertops.data.summary import pipeline_summary
from bertops.paths import DataLayout


def test_atomic_open_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind
    with atomic_open(target) as fh:
        fh.write("new")
    assert target.read_text(encoding="utf-8") == "new"
    assert target.stat().st_mode & 0o777 == 0o644


def test_atomic_dir_swaps_whole_directories(tmp_path: Path) -> None:
    target = tmp_path / "shards"
    target.mkdir()
    (target / "stale.bin").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "a.bin").write_text("a", encoding="utf-8")
        raise ValueError("bad data")
    assert sorted(p.name for p in target.iterdir()) == ["stale.bin"]
    with atomic_dir(target) as tmp:
        (tmp / "a.bin").write_text("a", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["a.bin"]  # stale files of an old run are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_jsonl_round_trip_and_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    assert write_jsonl(path, [{"text": "é"}, {"text": "b"}]) == 2
    assert list(read_jsonl(path)) == [{"text": "é"}, {"text": "b"}]
    path.write_text('{"a": 1}\n[1]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"r\.jsonl, row 2: each line must be a JSON object"):
        list(read_jsonl(path))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataLayout:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"project": {"data_dir": "d"}}), encoding="utf-8")
    layout = DataLayout(Path("d"))
    write_jsonl(layout.classification, [{"text": "a", "label": "positive"}] * 3)
    write_jsonl(layout.split_file("classification", "train"), [{"text": "a", "label": "positive"}] * 2)
    write_jsonl(layout.split_file("corpus", "heldout"), [{"doc_id": "x", "sentences": ["A."]}])
    layout.vocab_file.parent.mkdir(parents=True)
    layout.vocab_file.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n", encoding="utf-8")
    (layout.pretrain_dir).mkdir(parents=True)
    (layout.pretrain_dir / "manifest.json").write_text(
        json.dumps({"num_examples": {"train": 7}}), encoding="utf-8"
    )
    layout.reports.mkdir(parents=True)
    layout.data_report_json.write_text(json.dumps({"status": "passed"}), encoding="utf-8")
    layout.data_report_json.with_suffix(".md").write_text(
        "# Data report\n\n**Status: passed**\n", encoding="utf-8"
    )
    return layout


def test_pipeline_summary_reads_the_outputs(project: DataLayout) -> None:
    s = pipeline_summary(project)
    assert s["ingested"] == {"corpus": None, "classification": 3, "ner": None}
    assert s["splits"]["classification"] == {"train": 2, "validation": None, "test": None}
    assert s["splits"]["corpus"] == {"train": None, "heldout": 1}
    assert (s["vocab_size"], s["pretrain_instances"], s["report"]) == (6, {"train": 7}, "passed")


def test_data_summary_and_report_commands(project: DataLayout) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["data", "summary"])
    assert out.exit_code == 0, out.output
    assert "classification" in out.output and "vocabulary size: 6" in out.output and "train 7" in out.output
    out = runner.invoke(app, ["data", "report"])
    assert out.exit_code == 0 and "Status: passed" in out.output
    out = runner.invoke(app, ["data", "report", "--failed"])
    # no failed validation: said as such (not an error pointing at a stage that passed)
    assert out.exit_code == 0 and "no validation has failed here" in out.output, out.output


def test_data_repro_refuses_a_bad_config_before_dvc_starts(project: DataLayout) -> None:
    Path("params.yaml").write_text(yaml.safe_dump({"split": {"sed": 1}}), encoding="utf-8")
    out = CliRunner().invoke(app, ["data", "repro"])
    assert out.exit_code == 2 and "split.sed" in out.output
