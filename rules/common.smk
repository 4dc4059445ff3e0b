import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from dp3batch.batch import forward_sigterm_to_batch
from dp3batch.config import ConfigError
from dp3batch.dp3 import DP3Error
from dp3batch.planning import (
    batch_id,
    batch_specification,
    describe_pending,
    ensure_demo_data,
    make_plan,
)


def plan_or_exit():
    """Validate the config and find the pending MSs; a problem ends the run with one message."""
    try:
        ensure_demo_data(config)
        plan = make_plan(config)
        validate(config, schema="../config/schema.yaml")
    except (ConfigError, DP3Error) as error:
        sys.exit(f"Error: {error}")
    print(describe_pending(plan), file=sys.stderr)
    return plan


PLAN = plan_or_exit()
BATCH_ID = batch_id(PLAN) if PLAN.pending else None


def batch_marker(batch):
    """The central job's output: the results of one batch, written when all MSs succeeded."""
    return str(PLAN.output_dir / "logs" / "batches" / f"{batch}.json")


def batch_log(batch):
    return str(PLAN.output_dir / "logs" / "batches" / f"{batch}.log")


def get_batch_specification(wildcards):
    return batch_specification(PLAN, config, wildcards.batch)


def get_final_output():
    """The current batch's marker if any MS is pending, else the completion records (present)."""
    if PLAN.pending:
        return [batch_marker(BATCH_ID)]
    return [str(ms.output / "dp3_completion.json") for ms in PLAN.measurement_sets]


def report_failure():
    """Repeat the batch's own error report last, below Snakemake's messages."""
    failure_report = PLAN.output_dir / "logs" / "failed.txt"
    if failure_report.is_file():
        print(f"\n{failure_report.read_text()}", file=sys.stderr)
