"""Test data and the harness shared by the tests, the benchmarks and the demo: generated MSs,
the real `snakemake` command, a real dask cluster."""
