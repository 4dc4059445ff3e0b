"""Central job: run DP3 on every pending MS through dask (see dp3batch.dask_stage.central_job).

    process_batch.py BATCH_SPECIFICATION_JSON BATCH_MARKER LOG_FILE

The workflow's central rule runs it as a shell command (see
dp3batch.rule_layer.central_job_shell).
"""

import json
import sys
from pathlib import Path

# This workflow's own package first, before any dp3batch installed from another checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dp3batch.dask_stage.central_job import end_process, main  # noqa: E402

# The guard matters: dask's worker processes start by re-importing this file.
if __name__ == "__main__":
    specification, marker, log_file = sys.argv[1:4]
    end_process(main(json.loads(Path(specification).read_text()), marker, log_file))
