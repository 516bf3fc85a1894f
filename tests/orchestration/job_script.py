"""A tiny Ray job for the orchestration tests: counts its starts in a file, logs, prints BERTOPS_RESULT."""

import json
import sys
import time
from pathlib import Path

counter, seconds, code = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
with counter.open("a") as fh:
    fh.write("start\n")
print("tiny job started", flush=True)
time.sleep(seconds)
if code:
    print("tiny job failing on purpose", flush=True)
    sys.exit(code)
print("BERTOPS_RESULT " + json.dumps({"run_id": "r-123", "starts": len(counter.read_text().splitlines())}))
