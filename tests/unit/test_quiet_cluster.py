"""Unit tests of the dask settings every cluster of the workflow starts with."""

import re

from conftest import REPO
from dp3batch.dask_stage.cluster import QUIET_CLUSTER_CONFIG, quiet_cluster_environment


def test_the_environment_names_each_setting_as_dask_reads_it():
    import dask

    environment = quiet_cluster_environment()
    read = dask.config.collect_env(environment)
    assert dask.config.get("distributed.worker.profile.enabled", config=read) is False
    for key, value in QUIET_CLUSTER_CONFIG.items():
        assert dask.config.get(key, config=read) == value


def test_the_cluster_page_exports_the_same_settings_before_starting_a_cluster():
    page = (REPO / "docs" / "clusters.md").read_text()
    block = page.split("## Using an existing dask cluster", 1)[1].split("```bash", 1)[1]
    block = block.split("dask scheduler", 1)[0]
    exported = dict(re.findall(r"(DASK_[A-Z_]+)=(\S+)", block))
    assert exported == quiet_cluster_environment()
