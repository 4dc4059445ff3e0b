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
    RUN.on_start()


onsuccess:
    RUN.on_success()


onerror:
    RUN.on_error()
