"""Evaluation of candidates on the held-out test split: metrics, reviewer artifacts, latency, MLflow runs.

    from bertops.evaluation.evaluate import evaluate
    result = evaluate("artifacts/finetune", "data/split/classification/test.jsonl", cfg.evaluation,
                      output_dir="artifacts/evaluation", tracking_uri=cfg.tracking_uri())

Modules: ``evaluate`` (``evaluate()`` dispatching on the model's task, ``evaluate_version()``), one per task
(``classification``, ``ner``, ``pretraining``), ``result`` (the result type, publishing, finding an earlier run),
``errors``, ``metrics`` (pure metric functions), ``artifacts`` (plots, DVC files), ``latency``.

A leaf: the registry, orchestration and the CLI import it; it imports none of them (tests/test_import_graph.py).
"""
