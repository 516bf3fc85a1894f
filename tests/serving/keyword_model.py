"""A small MLflow pyfunc with bertops' classifier output contract, logged as "model from code" by the tests.

Used where a test needs many versions or a deliberately broken one quickly (no TensorFlow). Its
``model_config``: ``bias`` (shifts every score, so versions answer differently), ``sleep_s`` (per call),
``broken`` (``"load"``: loading fails; ``"output"``: probabilities that are not a distribution), ``fail_word``
(a call that has a text with this word raises: the version loads and warms up, then errors on live traffic).
"""

import math
import time

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

POSITIVE = {"good", "great", "fine", "warm", "funny", "beautifully", "moving", "best"}
NEGATIVE = {"bad", "dull", "boring", "worst", "long", "awful"}


class KeywordModel(PythonModel):
    def load_context(self, context):
        cfg = context.model_config or {}
        if cfg.get("broken") == "load":
            raise RuntimeError("this version is broken on purpose (load)")
        self.bias = float(cfg.get("bias", 0.0))
        self.sleep_s = float(cfg.get("sleep_s", 0.0))
        self.broken_output = cfg.get("broken") == "output"
        self.fail_word = cfg.get("fail_word")

    def predict(self, context, model_input, params=None):
        texts = model_input["text"].tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.fail_word and any(self.fail_word in t.lower().split() for t in texts):
            raise RuntimeError(f"this version fails on {self.fail_word!r} on purpose")
        rows = []
        for text in texts:
            words = text.lower().split()
            score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words) + self.bias
            pos = 1 / (1 + math.exp(-max(-30.0, min(30.0, score))))
            neg = 1 - pos
            if self.broken_output:
                pos, neg = 0.9, 0.9
            label = "positive" if pos >= neg else "negative"
            rows.append(
                {"label": label, "probability": max(pos, neg), "prob_negative": neg, "prob_positive": pos}
            )
        return pd.DataFrame(rows, columns=["label", "probability", "prob_negative", "prob_positive"])


mlflow.models.set_model(KeywordModel())
