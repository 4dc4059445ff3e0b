"""Central job: run DP3 on every pending MS through dask (see dp3batch.batch)."""

import sys

from dp3batch.batch import main

# The guard matters: dask's worker processes start by re-importing this file.
if __name__ == "__main__":
    sys.exit(main(snakemake.params.batch, snakemake.output.batch, snakemake.log[0]))  # noqa: F821
