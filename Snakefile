from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# Beside the Snakefile, so that the workflow also runs from another working directory.
configfile: Path(workflow.basedir) / "config" / "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/process.smk"


rule all:
    default_target: True
    input:
        get_final_output(),


onstart:
    forward_interrupts()


onsuccess:
    finish_run()


onerror:
    write_run_summary()
    release_snakemake_timers()
    report_failure()
