"""Ray job entry point: BERT pretraining (MLM + NSP) with Ray Train.

    python ray_jobs/pretrain.py --params params.yaml --set pretrain.max_steps=500
    ray job submit --working-dir . -- python ray_jobs/pretrain.py --params params.yaml

Prints ``BERTOPS_RESULT {"run_id": ..., "bundle_dir": ..., "metrics": {...}}`` as its last line.
"""

import sys
from pathlib import Path

# Submitted with --working-dir, the job runs from an unpacked copy of the repository: use its src/.
_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from bertops.training.job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("pretrain"))
