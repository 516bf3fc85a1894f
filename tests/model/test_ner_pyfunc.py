"""Entities from raw text: words and their character offsets, BIO read as seqeval reads it, and the NER pyfunc
(logged, loaded in a fresh process, served by ``mlflow models serve`` over HTTP).

The real-model tests use a tiny NER bundle whose head answers one chosen tag everywhere (kernel 0, bias one-hot),
so that what each text's entities must be is known exactly: ``I-PER`` everywhere makes one entity from the first
word to the last, ``B-LOC`` everywhere makes every word an entity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.conftest import stop_group

from bertops.data.tokenizer import build_tokenizer
from bertops.model.entities import bio_spans, entities_of, split_words
from bertops.net import free_port

from .ner_bundles import LABELS, SPECIAL, WORDS, constant_tag_bundle

# Hand-made texts: accents (precomposed and combining), CJK without spaces, emoji (one and two code points),
# runs of spaces, tabs and a newline, punctuation glued to words.
TEXTS = [
    "Anna Smith flew to Zürich  today",
    "e\u0301cole   Crème\tbrûlée",
    "我在東京見到了Anna",
    "I ❤️ Paris 😀😀 , NYC!",
    "   leading and trailing spaces   ",
    "",
]


def _tokenizer():
    return build_tokenizer({t: i for i, t in enumerate(SPECIAL + WORDS)})


def test_words_keep_their_offsets_into_the_original_text() -> None:
    tok = _tokenizer()
    for text in TEXTS:
        words = split_words(tok, text)
        for word, start, end in words:
            assert text[start:end] == word and word.strip() == word and word, (text, word, start, end)
        starts = [s for _, s, _ in words]
        assert starts == sorted(starts)
    assert [w for w, _, _ in split_words(tok, TEXTS[0])] == ["Anna", "Smith", "flew", "to", "Zürich", "today"]
    assert [w for w, _, _ in split_words(tok, TEXTS[2])] == ["我", "在", "東", "京", "見", "到", "了", "Anna"]
    assert split_words(tok, TEXTS[1])[0] == ("e\u0301cole", 0, 6)  # the combining accent stays in the word
    assert [w for w, _, _ in split_words(tok, TEXTS[3])] == ["I", "❤️", "Paris", "😀😀", ",", "NYC", "!"]
    assert split_words(tok, "") == [] and split_words(tok, "  \t ") == []


@pytest.mark.parametrize(
    ("tags", "spans"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
        (
            ["I-PER", "I-PER", "O"],
            {("PER", 0, 2)},
        ),  # I- at the start begins an entity (seqeval, default mode)
        (["O", "I-LOC", "I-LOC"], {("LOC", 1, 3)}),  # I- after O begins one
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),  # a change of type ends and begins one
        (["B-PER", "B-PER"], {("PER", 0, 1), ("PER", 1, 2)}),
    ],
)
def test_bio_repair_as_seqeval_counts(tags: list[str], spans: set[tuple[str, int, int]]) -> None:
    assert bio_spans(tags) == spans


def test_entities_carry_the_original_text_and_offsets() -> None:
    text = "Anna  Smith flew to Zürich"
    words = split_words(_tokenizer(), text)
    out = entities_of(text, words, ["B-PER", "I-PER", "O", "O", "I-LOC"], [0.9, 0.7, 1.0, 1.0, 0.6])
    assert out == [
        {"text": "Anna  Smith", "type": "PER", "start": 0, "end": 11, "score": pytest.approx(0.8)},
        {"text": "Zürich", "type": "LOC", "start": 20, "end": 26, "score": pytest.approx(0.6)},
    ]


# --------------------------------------------------------------------------------------- a real bundle
def _check_constant_entities(tag: str, texts: list[str], got: list[list[dict]]) -> None:
    tok = _tokenizer()
    kind = tag.partition("-")[2]
    for text, entities in zip(texts, got, strict=True):
        words = split_words(tok, text)
        if tag.startswith("I-"):  # one entity from the first word's start to the last word's end
            expected = [(words[0][1], words[-1][2])] if words else []
        else:  # every word an entity of its own
            expected = [(s, e) for _, s, e in words]
        assert [(e["start"], e["end"]) for e in entities] == expected, (text, entities)
        for e in entities:
            assert e["text"] == text[e["start"] : e["end"]] and e["type"] == kind
            assert 0.99 < e["score"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("tag", ["I-PER", "B-LOC"])
def test_extract_entities_with_a_real_bundle(tmp_path: Path, tag: str) -> None:
    from bertops.model.bundle import load_bundle
    from bertops.model.entities import extract_entities

    bundle = load_bundle(constant_tag_bundle(tmp_path / "ner", tag))
    _check_constant_entities(tag, TEXTS, extract_entities(bundle, TEXTS, batch_size=2))
    # A text longer than max_seq_length: words beyond it are O, so the entity stops where the model stops reading.
    long_text = " ".join(["anna"] * 60)
    (entities,) = extract_entities(bundle, [long_text])
    assert entities and entities[-1]["end"] <= len(" ".join(["anna"] * 30))


def _post(url: str, body: dict, timeout: float = 60) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_ner_pyfunc_in_a_fresh_process_and_under_mlflow_models_serve(tmp_path: Path) -> None:
    import mlflow

    from bertops.model.pyfunc import log_bundle

    bundle_dir = constant_tag_bundle(tmp_path / "ner", "I-PER")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bertops-ner-pyfunc")
    with mlflow.start_run():
        info = log_bundle(bundle_dir, name="model")
    assert info.metadata["bertops_task"] == "ner" and info.metadata["labels"] == LABELS
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "logged")))

    script = (
        "import sys, json, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "a = m.predict(json.loads(sys.argv[2]))\n"
        "b = m.predict(pd.DataFrame({'text': json.loads(sys.argv[2])}))\n"
        "assert a.equals(b)\n"
        "print(json.dumps(a['entities'].tolist()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(local), json.dumps(TEXTS)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_constant_entities("I-PER", TEXTS, json.loads(proc.stdout.strip().splitlines()[-1]))

    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # it execs uvicorn from the venv
    with open(log, "wb") as fh:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(local),
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-6000:].replace(
                "\r", "\n"
            )
            time.sleep(1)
        answer = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": TEXTS})
        _check_constant_entities("I-PER", TEXTS, [row["entities"] for row in answer["predictions"]])
    finally:
        stop_group(server)
