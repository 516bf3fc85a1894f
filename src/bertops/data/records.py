"""TFRecord files of the data step: feature specs, the manifest, a fast writer and the ``tf.data`` parser.

Writing: :func:`serialize_examples` turns a batch of fixed-shape features (``{name: array (n, width)}``) into
the bytes of a TFRecord file holding one ``tf.train.Example`` per row. It builds the protobuf wire format and
the masked CRC32C framing with NumPy, a whole batch at a time, instead of one Python ``tf.train.Example``
per row (~15 µs a pretraining record on a shared 2-core machine, and TensorFlow is not imported). The bytes are the standard format: TensorFlow's
``TFRecordDataset`` (which verifies the CRCs) and ``tf.train.Example.FromString`` read them.

Reading: :func:`parse_fn` returns the parse function for a manifest; :func:`make_dataset` opens one split::

    manifest = load_manifest("data/pretrain/manifest.json")
    ds = make_dataset("data/pretrain/manifest.json", "train")   # dicts of int32 / float32 tensors

Feature names, shapes and the manifest layout are the contract in ``docs/architecture.md``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bertops.paths import MANIFEST

KINDS = ("pretraining", "classification", "ner")
IGNORE_INDEX = -100  # NER label on word pieces that are not the first piece of a word (ignored by the loss)

# Rows serialised per NumPy pass: small enough that the CRC's per-byte columns stay in the L1/L2 cache.
_BATCH_ROWS = 4096


# ------------------------------------------------------------------------------------------- feature specs
def feature_spec(kind: str, max_seq_length: int, max_predictions_per_seq: int | None = None) -> dict[str, Any]:
    """The TFRecord features of one kind of record: ``{name: {"dtype": "int64"|"float32", "shape": [n]}}``."""
    s = max_seq_length
    inputs = {name: {"dtype": "int64", "shape": [s]} for name in ("token_ids", "segment_ids", "padding_mask")}
    if kind == "pretraining":
        if max_predictions_per_seq is None:
            raise ValueError("pretraining records need max_predictions_per_seq")
        p = max_predictions_per_seq
        return {
            **inputs,
            "masked_lm_positions": {"dtype": "int64", "shape": [p]},
            "masked_lm_ids": {"dtype": "int64", "shape": [p]},
            "masked_lm_weights": {"dtype": "float32", "shape": [p]},
            "next_sentence_label": {"dtype": "int64", "shape": [1]},
        }
    if kind == "classification":
        return {**inputs, "label": {"dtype": "int64", "shape": [1]}}
    if kind == "ner":
        return {**inputs, "labels": {"dtype": "int64", "shape": [s]}}
    raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")


# ------------------------------------------------------------------------------------------------ CRC32C
@functools.cache
def _crc_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CRC32C (Castagnoli, reflected 0x82F63B78) tables.

    ``t8`` feeds one byte. ``lo``/``hi`` feed four bytes at once: after four byte steps the register is a
    linear function of its starting value (data XORed in), split into its low and high 16 bits.
    """
    t8 = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t8 = np.where(t8 & 1, (t8 >> 1) ^ np.uint32(0x82F63B78), t8 >> 1).astype(np.uint32)

    def four_zero_bytes(state: np.ndarray) -> np.ndarray:
        for _ in range(4):
            state = t8[state & 0xFF] ^ (state >> 8)
        return state

    x = np.arange(65536, dtype=np.uint32)
    return t8, four_zero_bytes(x), four_zero_bytes(x << 16)


@functools.cache
def _zero_terms(max_len: int) -> np.ndarray:
    """``crc32c(b"\\0" * n)`` for n in 0..max_len: the part of the standard CRC that depends only on length."""
    t8 = _crc_tables()[0]
    out = np.empty(max_len + 1, dtype=np.uint32)
    state = 0xFFFFFFFF
    for n in range(max_len + 1):
        out[n] = state ^ 0xFFFFFFFF
        state = int(t8[state & 0xFF]) ^ (state >> 8)
    return out


def _apply_linear(tables: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply a GF(2)-linear map of the 32-bit register, given as four byte tables (4, 256)."""
    return (
        tables[0][reg & 0xFF] ^ tables[1][(reg >> 8) & 0xFF] ^ tables[2][(reg >> 16) & 0xFF] ^ tables[3][reg >> 24]
    )


@functools.cache
def _unfeed_zero_tables(bits: int) -> np.ndarray:
    """Byte tables of the maps that undo feeding 2**b zero bytes into a (zero-initialised) CRC register."""
    t8 = _crc_tables()[0]
    inv_top = np.empty(256, dtype=np.uint32)
    inv_top[t8 >> 24] = np.arange(256, dtype=np.uint32)  # the top byte of t8[b] identifies b

    def unfeed_one(reg: np.ndarray) -> np.ndarray:  # inverse of reg -> t8[reg & 0xFF] ^ (reg >> 8)
        b = inv_top[reg >> 24]
        return ((reg ^ t8[b]) << 8) | b

    basis = np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]
    tables = [unfeed_one(basis)]
    for _ in range(1, bits):
        prev = tables[-1]
        tables.append(np.stack([_apply_linear(prev, _apply_linear(prev, basis[j])) for j in range(4)]))
    return np.stack(tables)


def crc32c_rows(left_aligned: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Standard CRC32C of each row's first ``lengths[i]`` bytes; the bytes after them must be zero.

    One loop over 4-byte columns, vectorised over rows, with a zero initial register. Trailing zeros each apply
    a fixed invertible linear map to the register, which is undone per row (binary powers of the inverse);
    the standard initial value and final XOR add a term that depends only on the length (:func:`_zero_terms`).
    """
    _, lo, hi = _crc_tables()
    n, width = left_aligned.shape
    pad = -width % 4
    words = np.empty(((width + pad) // 4, n), dtype=np.uint32)  # one contiguous row per step
    if pad:
        left_aligned = np.concatenate([left_aligned, np.zeros((n, pad), dtype=np.uint8)], axis=1)
    words[...] = np.ascontiguousarray(left_aligned).view("<u4").T
    crc = np.zeros(n, dtype=np.uint32)
    idx = np.empty(n, dtype=np.uint32)
    tmp = np.empty(n, dtype=np.uint32)
    for w in words:
        crc ^= w
        np.bitwise_and(crc, 0xFFFF, out=idx)
        np.right_shift(crc, 16, out=crc)
        hi.take(crc, out=tmp)
        lo.take(idx, out=crc)
        crc ^= tmp
    trailing = (width + pad) - lengths
    max_trailing = int(trailing.max(initial=0))
    if max_trailing:
        undo = _unfeed_zero_tables(max(1, max_trailing.bit_length()))
        for b in range(max_trailing.bit_length()):
            sel = (trailing >> b) & 1 == 1
            if sel.any():
                crc[sel] = _apply_linear(undo[b], crc[sel])
    return crc ^ _zero_terms(int(lengths.max(initial=0)))[lengths]


def masked_crc(crc: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    crc = crc.astype(np.uint64)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8 & 0xFFFFFFFF).astype(np.uint32)


# --------------------------------------------------------------------------------------- protobuf encoding
def _varint_width(max_value: int) -> int:
    return max(1, (int(max_value).bit_length() + 6) // 7)


def _varint_len(values: np.ndarray) -> np.ndarray:
    """Bytes of the varint encoding of each non-negative value (int64 array)."""
    n = np.ones(values.shape, dtype=np.int64)
    for j in range(1, _varint_width(int(values.max(initial=0)))):
        n += values >= (1 << (7 * j))
    return n


class _Varints:
    """Varint encodings of an (n, k) integer array: byte ``j`` of every value, and each value's byte count.

    Negative values take 10 bytes (two's complement, as protobuf encodes int64).
    """

    def __init__(self, values: np.ndarray) -> None:
        values = values.astype(np.int64)
        negative = bool((values < 0).any())
        width = 10 if negative else _varint_width(int(values.max(initial=0)))
        u = values.astype(np.uint64) if width > 4 else values.astype(np.uint32)
        self.bytes = [((u >> (7 * j)) & 0x7F).astype(np.uint8) for j in range(width)]
        self.sizes = np.ones(values.shape, dtype=np.int64)
        for j in range(1, width):
            more = u >= (1 << (7 * j))
            self.bytes[j - 1] |= more.view(np.uint8) << 7
            self.sizes += more
        self.width = width
        self.row_len = self.sizes.sum(axis=1)

    @property
    def uniform(self) -> bool:
        """Every value has the same byte count (so the block is a plain (n, k*size) byte matrix)."""
        return self.width == 1 or bool((self.sizes == self.sizes.flat[0]).all())

    def block(self) -> np.ndarray:
        size = int(self.sizes.flat[0]) if self.sizes.size else 1
        return np.stack(self.bytes[:size], axis=-1).reshape(self.sizes.shape[0], -1)


class _Writer:
    """Writes the bytes of one batch of records, left-aligned, into a zeroed (rows, width) matrix.

    A column cursor per row tracks where each record continues. While every row is at the same column, blocks
    are written as 2-D slices; after the first variable-length piece, with one flat scatter per byte position.
    """

    def __init__(self, rows: int, width: int) -> None:
        self.rows = rows
        self.buf = np.zeros((rows, width), dtype=np.uint8)
        self.flat = self.buf.reshape(-1)
        self.row_base = np.arange(rows, dtype=np.int64) * width
        self.col: int | np.ndarray = 0

    def fixed(self, block: np.ndarray) -> None:
        """Write an (rows, w) block (or a bytes constant) at every row's cursor."""
        if isinstance(block, bytes):
            block = np.frombuffer(block, dtype=np.uint8)[None, :]
        w = block.shape[1]
        if isinstance(self.col, int):
            self.buf[:, self.col : self.col + w] = block
            self.col += w
        else:
            start = self.row_base + self.col
            self.flat[start[:, None] + np.arange(w)] = block
            self.col = self.col + w

    def varints(self, enc: _Varints) -> None:
        """Write variable-length varints at every row's cursor."""
        if enc.uniform:
            self.fixed(enc.block())
            return
        # Offsets of each value; bytes written from the last position to the first, unconditionally: a byte
        # past a value's end lands where a later value (or the next piece) writes afterwards, so it never
        # survives (the spill past a record's end is cleared by finish()).
        ends = np.cumsum(enc.sizes, axis=1)
        starts = ends - enc.sizes
        base = self.row_base + self.col
        pos = starts + base[:, None]
        for j in range(enc.width - 1, -1, -1):
            self.flat[pos + j] = enc.bytes[j]
        self.col = self.col + enc.row_len

    def finish(self, spill: int) -> np.ndarray:
        """Clear bytes spilled past each record's end; return the record lengths."""
        col = np.broadcast_to(np.asarray(self.col, dtype=np.int64), (self.rows,))
        if spill and not isinstance(self.col, int):
            idx = (self.row_base + col)[:, None] + np.arange(spill)
            limit = self.row_base[:, None] + self.buf.shape[1]
            self.flat[np.minimum(idx, limit - 1)[idx < limit]] = 0
        return col.copy()


def _scalar_varints(values: np.ndarray) -> _Varints:
    return _Varints(values[:, None])


def _serialize_batch(features: Mapping[str, np.ndarray]) -> bytes:
    rows = next(iter(features.values())).shape[0]
    # Each feature: (name, payload, packed length per row). Fixed-layout features go first, so that most of
    # every record is written with 2-D slices (protobuf does not care about the order of map entries).
    entries = []
    for name in sorted(features):
        values = features[name]
        if values.dtype.kind == "f":
            payload: _Varints | np.ndarray = np.ascontiguousarray(values, dtype="<f4").view(np.uint8).reshape(rows, -1)
            packed_len = np.full(rows, payload.shape[1], dtype=np.int64)
            list_tag = b"\x12"  # Feature.float_list
            variable = False
        else:
            payload = _Varints(values)
            packed_len = payload.row_len
            list_tag = b"\x1a"  # Feature.int64_list
            variable = not payload.uniform
        entries.append((variable, name, payload, packed_len, list_tag))
    entries.sort(key=lambda e: (e[0], e[1]))

    # Lengths, inside out: Int64List/FloatList {value = 1 [packed]} < Feature < map entry {key = 1, value = 2}.
    pieces = []
    features_len = np.zeros(rows, dtype=np.int64)
    for _, name, payload, packed_len, list_tag in entries:
        key = name.encode()
        key_part = b"\x0a" + bytes([len(key)]) + key + b"\x12"
        list_len = 1 + _varint_len(packed_len) + packed_len
        feature_len = 1 + _varint_len(list_len) + list_len
        entry_len = len(key_part) + _varint_len(feature_len) + feature_len
        features_len += 1 + _varint_len(entry_len) + entry_len
        pieces.append((key_part, entry_len, feature_len, list_tag, list_len, packed_len, payload))
    record_len = 1 + _varint_len(features_len) + features_len

    # Row layout: [u64 length][masked crc of length][record][masked crc of record], records left-aligned.
    max_len = int(record_len.max())
    spill = 10
    writer = _Writer(rows, 12 + max_len + 4 + spill)
    writer.fixed(record_len.astype("<u8").view(np.uint8).reshape(rows, 8))
    writer.fixed(b"\0\0\0\0")  # the length's crc, filled in below
    writer.fixed(b"\x0a")  # Example.features
    writer.varints(_scalar_varints(features_len))
    for key_part, entry_len, feature_len, list_tag, list_len, packed_len, payload in pieces:
        writer.fixed(b"\x0a")  # Features.feature: a repeated map entry
        writer.varints(_scalar_varints(entry_len))
        writer.fixed(key_part)
        writer.varints(_scalar_varints(feature_len))
        writer.fixed(list_tag)
        writer.varints(_scalar_varints(list_len))
        writer.fixed(b"\x0a")
        writer.varints(_scalar_varints(packed_len))
        if isinstance(payload, _Varints):
            writer.varints(payload)
        else:
            writer.fixed(payload)
    ends = writer.finish(spill)
    if not np.array_equal(ends, 12 + record_len):
        raise AssertionError("internal error: record layout does not match the computed lengths")

    buf = writer.buf
    buf[:, 8:12] = masked_crc(crc32c_rows(buf[:, :8], np.full(rows, 8))).astype("<u4").view(np.uint8).reshape(rows, 4)
    rec_crc = masked_crc(crc32c_rows(buf[:, 12 : 12 + max_len], record_len))
    writer.flat[(writer.row_base + 12 + record_len)[:, None] + np.arange(4)] = (
        rec_crc.astype("<u4").view(np.uint8).reshape(rows, 4)
    )
    # Each row's frame is its prefix of 16 + record_len bytes.
    view = memoryview(writer.flat)
    return b"".join([view[s : s + n] for s, n in zip(writer.row_base.tolist(), (16 + record_len).tolist(), strict=True)])


def serialize_examples(features: Mapping[str, np.ndarray]) -> bytes:
    """TFRecord file bytes: one ``tf.train.Example`` per row of the equally long 2-D arrays in ``features``.

    Integer arrays become ``int64_list`` features, float arrays ``float_list`` (float32).
    """
    arrays = {k: np.asarray(v) for k, v in features.items()}
    if not arrays:
        raise ValueError("no features to serialise")
    rows = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(rows.values())) != 1 or any(v.ndim != 2 for v in arrays.values()):
        shapes = {k: v.shape for k, v in arrays.items()}
        raise ValueError(f"features must be 2-D arrays with the same number of rows, got {shapes}")
    n = next(iter(rows.values()))
    chunks = [
        _serialize_batch({k: v[start : start + _BATCH_ROWS] for k, v in arrays.items()})
        for start in range(0, n, _BATCH_ROWS)
    ]
    return b"".join(chunks)


def write_records(path: str | Path, features: Mapping[str, np.ndarray]) -> int:
    """Write ``features`` (see :func:`serialize_examples`) to a TFRecord file. Returns the number of records."""
    data = serialize_examples(features)
    Path(path).write_bytes(data)
    return next(iter(features.values())).shape[0]


def check_features(features: Mapping[str, np.ndarray], spec: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the feature when ``features`` do not match ``spec`` (names and widths)."""
    if set(features) != set(spec):
        raise ValueError(f"features {sorted(features)} do not match the spec {sorted(spec)}")
    for name, info in spec.items():
        if features[name].shape[1:] != tuple(info["shape"]):
            raise ValueError(f"feature {name!r} has width {features[name].shape[1:]}, the spec says {info['shape']}")


# ------------------------------------------------------------------------------------------------ manifest
def make_manifest(
    kind: str,
    *,
    max_seq_length: int,
    num_examples: Mapping[str, int],
    files: Mapping[str, list[str]],
    vocab_size: int,
    max_predictions_per_seq: int | None = None,
    label_map: list[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``manifest.json`` of a record set (layout in ``docs/architecture.md``); ``files`` are relative."""
    manifest: dict[str, Any] = {
        "kind": kind,
        "max_seq_length": max_seq_length,
        "num_examples": dict(num_examples),
        "files": {k: list(v) for k, v in files.items()},
        "feature_spec": feature_spec(kind, max_seq_length, max_predictions_per_seq),
        "vocab_size": vocab_size,
    }
    if kind == "pretraining":
        manifest["max_predictions_per_seq"] = max_predictions_per_seq
    if label_map is not None:
        manifest["label_map"] = list(label_map)
    if extra:
        manifest.update(extra)
    return manifest


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read a ``manifest.json``; its ``files`` stay relative (to the manifest's directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist (run the data pipeline: dvc repro)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key in ("kind", "max_seq_length", "num_examples", "files", "feature_spec"):
        if key not in manifest:
            raise ValueError(f"{path}: manifest lacks the key {key!r}")
    return manifest


def split_files(manifest_path: str | Path, split: str) -> list[str]:
    """Absolute paths of one split's record files."""
    manifest_path = Path(manifest_path)
    root = manifest_path if manifest_path.is_dir() else manifest_path.parent
    manifest = load_manifest(manifest_path)
    if split not in manifest["files"]:
        raise KeyError(f"{manifest_path}: no split {split!r}; it has {sorted(manifest['files'])}")
    return [str(root / f) for f in manifest["files"][split]]


# -------------------------------------------------------------------------------------------------- reading
def parse_fn(manifest: Mapping[str, Any], batched: bool = False) -> Callable[[Any], dict[str, Any]]:
    """The ``tf.data`` parse function of a manifest's records.

    It maps serialised Examples (one scalar string, or a vector of them with ``batched=True``) to a dict of
    tensors: integer features as ``int32``, float features as ``float32``, each of the spec's fixed shape.
    """
    import tensorflow as tf

    spec = {
        name: tf.io.FixedLenFeature(info["shape"], tf.int64 if info["dtype"] == "int64" else tf.float32)
        for name, info in manifest["feature_spec"].items()
    }

    def parse(serialized: Any) -> dict[str, Any]:
        parsed = tf.io.parse_example(serialized, spec) if batched else tf.io.parse_single_example(serialized, spec)
        return {k: tf.cast(v, tf.int32) if v.dtype == tf.int64 else v for k, v in parsed.items()}

    return parse


def make_dataset(manifest_path: str | Path, split: str, num_parallel_reads: int | None = None) -> Any:
    """A ``tf.data.Dataset`` of parsed records (dicts) of one split, files read in manifest order."""
    import tensorflow as tf

    files = split_files(manifest_path, split)
    manifest = load_manifest(manifest_path)
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=num_parallel_reads)
    return ds.map(parse_fn(manifest), num_parallel_calls=tf.data.AUTOTUNE)
