"""The data step: DVC stages that take raw text to training-ready files.

``ingest`` (sources, sentences) -> ``validate`` -> ``split`` -> ``vocab`` (tokenizer) -> ``pretrain_data``
(pretraining) and ``finetune_data`` (finetune, records). File names live in :mod:`bertops.paths`; the stage
entry points are the scripts in ``pipelines/`` and ``dvc.yaml`` wires them. Importing this package does nothing.
"""
