"""The report of the last batch: summary table and plots (see dp3batch.report)."""

import json
import sys
from pathlib import Path

from dp3batch.report import (
    collect_rows,
    dask_report_path,
    plot_durations,
    plot_flagged_fractions,
    plot_step_times,
    publish_dask_report,
    write_summary,
    write_summary_html,
)


def main(snakemake) -> None:
    sys.stderr = open(snakemake.log[0], "w")
    results = json.loads(open(snakemake.input.batch).read())
    log_dir = Path(snakemake.input.batch).parent.parent  # <output_dir>/logs/batches/<id>.json
    rows = collect_rows(snakemake.params.measurement_sets, results, log_dir)
    write_summary(rows, snakemake.output.table.replace(".tsv", ".json"), snakemake.output.table)
    batch = snakemake.wildcards.report_batch
    write_summary_html(rows, snakemake.output.html, f"Batch {batch}")
    plot_flagged_fractions(rows, snakemake.output.flagged)
    plot_durations(rows, snakemake.output.durations)
    plot_step_times(rows, snakemake.output.step_times)
    publish_dask_report(dask_report_path(log_dir.parent, batch), snakemake.output.dask)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
