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


def test_the_embedded_cluster_keeps_short_developer_logs():
    """Its scheduler, workers and client run in the central job's process: dask's logs of
    messages and transitions stay short there, whatever the batch's length."""
    from dp3batch.dask_stage.cluster import SHORT_LOG_CONFIG, embedded_cluster

    length = SHORT_LOG_CONFIG["distributed.admin.low-level-log-length"]
    with embedded_cluster(1, 1) as client:
        for index in range(3 * length):
            client.submit(abs, -index, pure=False).result(timeout=30)
        scheduler = client.cluster.scheduler
        (worker,) = client.cluster.workers.values()
        logs = {
            "client messages": client.scheduler_comm.recent_message_log,
            "scheduler transitions": scheduler.transition_log,
            "worker messages": worker.batched_stream.recent_message_log,
            "worker stimuli": worker.state.stimulus_log,
            **{
                f"scheduler messages to {address}": comm.recent_message_log
                for address, comm in scheduler.stream_comms.items()
            },
        }
        assert {name: len(log) <= length for name, log in logs.items()} == dict.fromkeys(logs, True)
        assert len(scheduler.transition_log) == length  # full: the bound is what held it


def test_the_client_of_an_external_cluster_keeps_a_short_log_of_its_messages():
    """A scheduler started without the workflow's settings (dask's 1,000 entries): the
    batch's own connection to it still keeps 100."""
    import dask
    from distributed import LocalCluster
    from dp3batch.dask_stage.cluster import SHORT_LOG_CONFIG, connect

    length = SHORT_LOG_CONFIG["distributed.admin.low-level-log-length"]
    assert dask.config.get("distributed.admin.low-level-log-length") > length
    with LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        assert cluster.scheduler.transition_log.maxlen > length
        with connect(cluster.scheduler_address) as client:
            assert client.scheduler_comm.recent_message_log.maxlen == length
