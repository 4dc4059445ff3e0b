"""The files a chain's steps read (H5Parm, sky model, AOFlagger strategy): checked before any
DP3 runs, each problem named with its step."""

from __future__ import annotations

import os

from dp3batch.config.errors import ConfigError
from dp3batch.dp3.parset import check_path

# DP3 (>= 6) reads sky models only in the text format, and takes a file for one only when its
# name ends like this; any other name is taken for a makesourcedb "sourcedb", which it refuses.
SKY_MODEL_SUFFIXES = (".skymodel", ".txt")
SKY_MODEL_PARAMETERS = ("skymodel", "sourcedb")


def check_extra_inputs(files: list[tuple[str, str]]) -> None:
    """Every file a step reads must exist and be readable, before any DP3 runs."""
    for key, path in files:
        step, _, parameter = key.rpartition(".")
        check_path(f"steps: {step} {parameter}", path)
        if os.path.isdir(path):
            hint = (
                " (a makesourcedb sourcedb? DP3 now reads the text sky model itself: give "
                "that file, or convert the sourcedb back with showsourcedb)"
                if parameter in SKY_MODEL_PARAMETERS
                else ""
            )
            raise ConfigError(f"steps: {step} {parameter} {path} is a directory, not a file{hint}")
        if not os.path.isfile(path):
            raise ConfigError(
                f"steps: {step} {parameter} {path} does not exist (relative paths are resolved "
                "against `extra_inputs_dir`)"
            )
        if not os.access(path, os.R_OK):
            raise ConfigError(f"steps: {step} {parameter} {path} is not readable")
        if parameter in SKY_MODEL_PARAMETERS and not path.endswith(SKY_MODEL_SUFFIXES):
            raise ConfigError(
                f"steps: {step} {parameter} {path}: DP3 reads a text sky model only from a file "
                "whose name ends in .skymodel or .txt; rename the file"
            )
