"""Ray-distributed pretraining and fine-tuning of bertops' BERT.

- :mod:`~bertops.training.optimization`: AdamW/LAMB with BERT's warm-up + linear decay, weight-decay exclusions.
- :mod:`~bertops.training.datasets`: TFRecord input sharded per worker, shuffled, batched, prefetched.
- :mod:`~bertops.training.tasks`: per task (pretraining, classification, NER): model, loss, metrics.
- :mod:`~bertops.training.checkpointing`: model + optimizer + loop state in a Ray checkpoint directory.
- :mod:`~bertops.training.tracking`: MLflow run, tags (git commit, data version, Ray job, Airflow run).
- :mod:`~bertops.training.loop`: ``train_loop_per_worker``, the custom MultiWorkerMirroredStrategy loop.
- :mod:`~bertops.training.trainer`: the driver: pre-flight checks, Ray Train (``backend.make_trainer``), result.

Entry points: :func:`bertops.training.trainer.pretrain` and :func:`bertops.training.trainer.finetune`.
"""
