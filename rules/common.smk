import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from dp3batch.rule_layer.central_job_shell import central_job_shell
from dp3batch.rule_layer.quick_exit import end_snakemake_quickly
from dp3batch.rule_layer.run import Run

end_snakemake_quickly()

# Planned once, here: which MSs are pending and why (also for -n), and this run's batch.
RUN = Run.start(config, sys.argv, workflow.configfiles)


wildcard_constraints:
    batch=RUN.batch_pattern,


def batch_marker(batch):
    return RUN.batch_marker(batch)


def batch_log(batch):
    return RUN.batch_log(batch)


def report_files(batch):
    return RUN.report_files(batch)


def get_batch_specification_file(wildcards):
    return RUN.batch_specification_file(wildcards.batch)


# The central job: the environment's own Python where Snakemake deploys software (conda, a
# container), else Snakemake's own, runs process_batch.py.
CENTRAL_JOB_SHELL = central_job_shell(
    "python" if workflow.deployment_settings.deployment_method else sys.executable,
    str(Path(workflow.basedir) / "scripts" / "process_batch.py"),
)


def get_final_output():
    return RUN.final_output()
