"""The dask stage: the central job, its cluster, the fan-out and one DP3 task per work item."""
