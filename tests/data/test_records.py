"""TFRecord writing and reading: the NumPy writer produces standard records that TensorFlow parses back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertops.data.records import (
    crc32c_rows,
    feature_spec,
    load_manifest,
    make_dataset,
    make_manifest,
    masked_crc,
    parse_fn,
    serialize_examples,
)

tf = pytest.importorskip("tensorflow")


def crc_of(data: bytes) -> int:
    row = np.frombuffer(data, dtype=np.uint8)[None, :]
    return int(crc32c_rows(row, np.array([len(data)]))[0])


def test_crc32c_known_values() -> None:
    assert crc_of(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc_of(b"") == 0
    assert crc_of(b"\x00" * 32) == 0x8A9136AA  # RFC 3720 test vector
    # Rows of different lengths in one call (trailing zeros are padding, not data).
    rows = np.zeros((2, 12), dtype=np.uint8)
    rows[0, :9] = np.frombuffer(b"123456789", np.uint8)
    rows[1, :3] = np.frombuffer(b"abc", np.uint8)
    got = crc32c_rows(rows, np.array([9, 3]))
    assert got.tolist() == [0xE3069283, crc_of(b"abc")]
    assert masked_crc(np.array([0], np.uint32)).tolist() == [0xA282EAD8]


def random_features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "token_ids": rng.integers(0, 30522, (n, 16)),
        "small": rng.integers(0, 2, (n, 16)),
        "negative": rng.choice([-100, 0, 3, 200_000, 2**40], (n, 5)),
        "weights": rng.random((n, 4)).astype(np.float32),
        "label": rng.integers(0, 2, (n, 1)),
    }


def test_records_parse_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = random_features(rng, 4100)  # more than one internal batch
    feats["token_ids"][0] = 0
    path = tmp_path / "x.tfrecord"
    path.write_bytes(serialize_examples(feats))
    # TFRecordDataset verifies both CRCs of every record.
    raw = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert len(raw) == 4100
    for i in (0, 1, 2047, 4096, 4099):
        ex = tf.train.Example.FromString(raw[i])
        for name, values in feats.items():
            feature = ex.features.feature[name]
            got = feature.float_list.value if values.dtype.kind == "f" else feature.int64_list.value
            np.testing.assert_array_equal(np.asarray(got, dtype=values.dtype), values[i])


def test_same_bytes_as_tensorflow_for_one_feature() -> None:
    values = np.array([[5, 300, 70000, 0]])
    ours = serialize_examples({"ids": values})
    example = tf.train.Example(
        features=tf.train.Features(feature={"ids": tf.train.Feature(int64_list=tf.train.Int64List(value=values[0]))})
    )
    payload = example.SerializeToString()
    assert ours[12:-4] == payload
    assert int.from_bytes(ours[:8], "little") == len(payload)


def test_manifest_and_dataset(tmp_path: Path) -> None:
    n, s = 10, 8
    rng = np.random.default_rng(1)
    feats = {
        "token_ids": rng.integers(0, 100, (n, s)),
        "segment_ids": np.zeros((n, s), np.int32),
        "padding_mask": np.ones((n, s), np.int32),
        "labels": np.where(rng.random((n, s)) < 0.5, -100, rng.integers(0, 5, (n, s))),
    }
    (tmp_path / "train.tfrecord").write_bytes(serialize_examples(feats))
    manifest = make_manifest("ner", max_seq_length=s, num_examples={"train": n}, files={"train": ["train.tfrecord"]},
                             vocab_size=100, label_map=["O", "B-x", "I-x"])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert load_manifest(tmp_path)["feature_spec"] == feature_spec("ner", s)
    batches = list(make_dataset(tmp_path / "manifest.json", "train").batch(n))
    assert len(batches) == 1
    for name, values in feats.items():
        assert batches[0][name].dtype == tf.int32
        np.testing.assert_array_equal(batches[0][name].numpy(), values)
    # The batched variant parses a vector of records.
    parsed = tf.data.TFRecordDataset(str(tmp_path / "train.tfrecord")).batch(4).map(parse_fn(manifest, batched=True))
    assert next(iter(parsed))["labels"].shape == (4, s)
    with pytest.raises(KeyError, match="no split 'test'"):
        make_dataset(tmp_path / "manifest.json", "test")


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        serialize_examples({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="unknown record kind"):
        feature_spec("images", 8)
