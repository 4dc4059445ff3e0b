"""The report: the summary of every MS, the batch's plots and tables, dask's own report."""
