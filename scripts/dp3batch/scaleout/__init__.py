"""Scale-out: dask workers as Slurm or PBS jobs (dask-jobqueue), checked with Slurm itself."""
