"""Export a classifier bundle as a TensorFlow SavedModel that TensorFlow Serving can load.

    export_saved_model("artifacts/finetune/bundle", "export/bert-sentiment/1")

writes ``saved_model.pb`` + ``variables/`` with one ``serving_default`` signature:

    inputs   token_ids, segment_ids, padding_mask   int32 (batch, length)
    outputs  probabilities  float32 (batch, num_labels)   (label-map order)
             logits         float32 (batch, num_labels)

and beside them ``vocab.txt``, ``label_map.json`` and ``bertops.json`` (the tokenisation settings), so a client
can tokenise exactly as training did. TF Serving reads ``<base>/<version>/``: export into a numbered directory.
The export is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from bertops.model.bundle import LABEL_MAP_FILE, META_FILE, VOCAB_FILE, BundleError, load_bundle

logger = logging.getLogger(__name__)

SIGNATURE = "serving_default"
INPUT_NAMES = ("token_ids", "segment_ids", "padding_mask")


def export_saved_model(bundle_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the bundle's classifier as a SavedModel with a ``serving_default`` signature; returns ``out_dir``."""
    import keras
    import tensorflow as tf

    bundle = load_bundle(bundle_dir)
    if bundle.task != "classification":
        raise BundleError(
            f"{bundle_dir}: only classification bundles export for serving, this one is {bundle.task!r}"
        )
    model = bundle.model
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{time.time_ns()}"

    def serve(token_ids: tf.Tensor, segment_ids: tf.Tensor, padding_mask: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        logits = tf.cast(model(inputs, training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(logits, axis=-1), "logits": logits}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=serve,
        input_signature=[tf.TensorSpec((None, None), tf.int32, name=n) for n in INPUT_NAMES],
    )
    try:
        archive.write_out(str(tmp), verbose=False)
        for name in (VOCAB_FILE, LABEL_MAP_FILE, META_FILE):
            shutil.copyfile(Path(bundle_dir) / name, tmp / name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported SavedModel %s (signature %s, labels %s)", out_dir, SIGNATURE, bundle.labels)
    return out_dir
