"""Fail the run, with the failure report, if any MS of the batch failed."""

import sys

from dp3batch.batch import check_batch

if __name__ == "__main__":
    sys.exit(check_batch(snakemake.input.batch, snakemake.log[0]))  # noqa: F821
