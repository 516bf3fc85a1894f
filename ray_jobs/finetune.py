"""Ray job entry point: fine-tuning (classification or NER) with Ray Train.

    python ray_jobs/finetune.py --params params.yaml --set finetune.init=pretrained
    ray job submit --working-dir . -- python ray_jobs/finetune.py --params params.yaml --run-name ft-1

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
    sys.exit(main("finetune"))
