"""The inputs: discovery of the MSs, casacore reads of them, spectral windows, the files the
steps read, and calibration checks against the data."""
