"""The rule layer: what the Snakefile's rules call, and Snakemake's own flags in terms of MSs."""
