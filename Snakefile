from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/process.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
