"""Central job: run DP3 on every pending MS through dask (see dp3batch.dask_stage.central_job)."""

import sys

# This workflow's own package first: Snakemake appends the script's directory to the path,
# after any dp3batch installed from another checkout.
sys.path.insert(0, snakemake.scriptdir)  # noqa: F821

from dp3batch.dask_stage.central_job import end_process, main

# The guard matters: dask's worker processes start by re-importing this file.
if __name__ == "__main__":
    end_process(main(snakemake.params.batch, snakemake.output.batch, snakemake.log[0]))  # noqa: F821
