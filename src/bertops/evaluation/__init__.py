"""Evaluation of candidates on the held-out test split: metrics, reviewer artifacts, latency, MLflow runs.

    from bertops.evaluation.evaluate import evaluate
    result = evaluate("artifacts/finetune", "data/split/classification/test.jsonl", cfg.evaluation,
                      output_dir="artifacts/evaluation", tracking_uri=cfg.tracking_uri())

Modules: ``metrics`` (pure metric functions), ``artifacts`` (plots, DVC files), ``latency``, ``evaluate``.
"""
