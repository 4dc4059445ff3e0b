"""The JSON of the typed contracts as the workflow writes it (a completion record, a batch
specification, a batch marker), for unit tests, and variants of them."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from dp3batch.books.batch_spec import BatchSpec
from dp3batch.books.records import CompletionRecord

# A record as `execution.process_measurement_set` wrote it for the demo data (`make run`),
# with its paths, its per-channel and per-antenna flag counts and its file lists shortened:
# the keys, types and order of the file on disk, which every later version must read back
# unchanged.
WRITTEN_RECORD_JSON = """
{
  "format": 1,
  "name": "demo_0",
  "input": "/data/demo_data/demo_0.ms",
  "output": "/data/results/demo_0.ms",
  "input_fingerprint": "7046c424a331ec796645ffcbf817d9b20a0499540acf61625fe99237f417a115",
  "band": null,
  "windows": {
    "descriptions": 1,
    "bands": [
      0
    ],
    "description_fingerprint": "eb41131b74aaa2380541056df1e657afa2e3af607ea346a65935b642bc2cfbb8"
  },
  "parameters": [
    [
      "checkparset",
      "1"
    ],
    [
      "steps",
      "[preflagger,aoflagger,averager]"
    ],
    [
      "preflagger.type",
      "preflagger"
    ],
    [
      "aoflagger.type",
      "aoflagger"
    ],
    [
      "aoflagger.strategy",
      "/venv/site-packages/DP3.libs/aoflagger/strategies/lofar-default.lua"
    ],
    [
      "averager.type",
      "averager"
    ],
    [
      "averager.timestep",
      "2"
    ],
    [
      "averager.freqstep",
      "2"
    ]
  ],
  "parameters_fingerprint": "e008a600a3be40cc4b16f6ac80907fd09015e4f6a80b7d68d23db2186f9581db",
  "extra_inputs_fingerprint": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  "dp3_version": "6.6.0",
  "telescope": "LOFAR",
  "stations": [
    "CS001HBA0",
    "CS002HBA0",
    "CS003HBA0",
    "CS004HBA0",
    "CS005HBA0",
    "CS006HBA0"
  ],
  "aoflagger_strategies": {
    "aoflagger": "/venv/site-packages/DP3.libs/aoflagger/strategies/lofar-default.lua"
  },
  "dp3_executable": "/data/.venv/bin/DP3.py",
  "dp3_arguments": [
    "msin=/data/demo_data/demo_0.ms",
    "msout=/data/results/.demo_0.ms.tmp-ce9cf0ec7998",
    "numthreads=1",
    "aoflagger.memorymax=12.64",
    "checkparset=1",
    "steps=[preflagger,aoflagger,averager]",
    "preflagger.type=preflagger",
    "aoflagger.type=aoflagger",
    "aoflagger.strategy=/venv/site-packages/DP3.libs/aoflagger/strategies/lofar-default.lua",
    "averager.type=averager",
    "averager.timestep=2",
    "averager.freqstep=2"
  ],
  "worker": "inproc://192.0.2.2/17123/4",
  "numthreads": 1,
  "started": "2026-11-28T04:14:06.500+00:00",
  "finished": "2026-11-28T04:14:06.830+00:00",
  "duration_seconds": 0.333,
  "size_estimate_bytes": 1843200,
  "shape_before": {
    "rows": 600,
    "times": 40,
    "channels": 32,
    "interval": 2.0,
    "channel_width": 195312.5,
    "flagged_fraction": 0.0
  },
  "shape_after": {
    "rows": 300,
    "times": 20,
    "channels": 16,
    "interval": 4.0,
    "channel_width": 390625.0,
    "flagged_fraction": 0.0008333333333333334
  },
  "shape_expected": {
    "times": 20,
    "baselines": 15,
    "channels": 16,
    "interval": 4.0
  },
  "required_files": [],
  "output_bytes": 2059623,
  "step_seconds": {
    "MsReader": 0.0045,
    "preflagger": 0.0,
    "aoflagger": 0.02709,
    "averager": 0.0006299999999999999,
    "msout": 0.061919999999999996
  },
  "flags_by_step": {
    "preflagger": {
      "percent": 0.0,
      "flagged": 0,
      "visibilities": 19200,
      "per_channel": [
        0,
        0,
        0,
        0
      ],
      "per_antenna": [
        0,
        0,
        0
      ]
    },
    "aoflagger": {
      "percent": 6.323,
      "flagged": 1214,
      "visibilities": 19200,
      "per_channel": [
        3,
        4,
        3,
        3
      ],
      "per_antenna": [
        6,
        6,
        6
      ]
    }
  },
  "output_fingerprint": "23a8f47144329d89d278a966fdfca35a7f63bf697b5e8deff947a9dcc483d0d4",
  "input_files": [
    "ANTENNA/table.dat",
    "ANTENNA/table.f0",
    "ANTENNA/table.info",
    "table.dat",
    "table.f0",
    "table.info"
  ],
  "output_files": [
    "ANTENNA/table.dat",
    "ANTENNA/table.f0",
    "ANTENNA/table.info",
    "table.dat",
    "table.f1",
    "table.f1i",
    "table.info"
  ]
}
"""


def written_record() -> dict[str, Any]:
    """The record above, as JSON data."""
    return json.loads(WRITTEN_RECORD_JSON)


def make_record(**fields: Any) -> CompletionRecord:
    """The record above with some fields replaced."""
    return replace(CompletionRecord.from_json(written_record()), **fields)


# A batch specification as `planning.batch_specification` makes it for the demo data, paths
# and lists shortened: one MS with parameters of its own, one locked without.
WRITTEN_SPEC_JSON = """
{
  "batch_id": "b1",
  "scheduler": null,
  "local_cluster": {
    "n_workers": null,
    "threads_per_worker": null
  },
  "output_dir": "/data/results",
  "log_dir": "/data/results/logs",
  "dp3_executable": "/data/.venv/bin/DP3.py",
  "dp3_version": "6.6.0",
  "parameters": {
    "msin": {},
    "msout": {},
    "steps": [
      {
        "name": "preflagger",
        "type": "preflagger",
        "params": {},
        "added": {}
      },
      {
        "name": "aoflagger",
        "type": "aoflagger",
        "params": {},
        "added": {}
      },
      {
        "name": "averager",
        "type": "averager",
        "params": {
          "timestep": 2,
          "freqstep": 2
        },
        "added": {}
      }
    ],
    "band": null
  },
  "parameters_fingerprint": "a339b97533ca33d358e9d9de997696cb57e4c8ab700e87bc9a5b144aeb958799",
  "extra_inputs_fingerprint": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  "worker_wait_seconds": 60,
  "all_measurement_sets": [
    {
      "name": "demo_0",
      "input": "/data/demo_data/demo_0.ms",
      "output": "/data/results/demo_0.ms"
    },
    {
      "name": "demo_1",
      "input": "/data/demo_data/demo_1.ms",
      "output": "/data/results/demo_1.ms"
    },
    {
      "name": "demo_2",
      "input": "/data/demo_data/demo_2.ms",
      "output": "/data/results/demo_2.ms"
    }
  ],
  "dask_report_min_seconds": 60,
  "dask_report_task_stream": 2000,
  "planned_at": "2026-11-28T04:14:46.006+00:00",
  "measurement_sets": [
    {
      "name": "demo_0",
      "input": "/data/demo_data/demo_0.ms",
      "output": "/data/results/demo_0.ms",
      "band": null,
      "reason": "forced",
      "size": 897104,
      "parameters": {
        "msin": {},
        "msout": {},
        "steps": [
          {
            "name": "preflagger",
            "type": "preflagger",
            "params": {},
            "added": {}
          },
          {
            "name": "aoflagger",
            "type": "aoflagger",
            "params": {},
            "added": {
              "strategy": "/venv/site-packages/DP3.libs/aoflagger/strategies/lofar-default.lua"
            }
          },
          {
            "name": "averager",
            "type": "averager",
            "params": {
              "timestep": 2,
              "freqstep": 2
            },
            "added": {}
          }
        ],
        "band": null
      },
      "parameters_fingerprint": "e008a600a3be40cc4b16f6ac80907fd09015e4f6a80b7d68d23db2186f9581db",
      "locked_by": null
    },
    {
      "name": "demo_1",
      "input": "/data/demo_data/demo_1.ms",
      "output": "/data/results/demo_1.ms",
      "band": null,
      "reason": "missing; LOCKED by another process (pid 4242)",
      "size": 897104,
      "locked_by": 4242
    }
  ]
}
"""


def written_spec() -> dict[str, Any]:
    return json.loads(WRITTEN_SPEC_JSON)


def make_spec(**fields: Any) -> BatchSpec:
    """The specification above with some fields replaced."""
    return replace(BatchSpec.from_json(written_spec()), **fields)


# A batch marker: a done result as the demo run wrote it (flag counts shortened), a failed
# one and one not processed, with the keys each has.
WRITTEN_MARKER_JSON = """
[
  {
    "name": "demo_0",
    "input": "/data/demo_data/demo_0.ms",
    "output": "/data/results/demo_0.ms",
    "log": "/data/results/logs/demo_0.log",
    "worker": "inproc://192.0.2.2/17123/4",
    "numthreads": 1,
    "started": "2026-11-28T04:14:06.500+00:00",
    "status": "done",
    "finished": "2026-11-28T04:14:06.830+00:00",
    "duration_seconds": 0.333,
    "size_estimate_bytes": 1843200,
    "shape_before": {
      "rows": 600,
      "times": 40,
      "channels": 32,
      "interval": 2.0,
      "channel_width": 195312.5,
      "flagged_fraction": 0.0
    },
    "shape_after": {
      "rows": 300,
      "times": 20,
      "channels": 16,
      "interval": 4.0,
      "channel_width": 390625.0,
      "flagged_fraction": 0.0008333333333333334
    },
    "output_bytes": 2059623,
    "step_seconds": {
      "MsReader": 0.0045,
      "preflagger": 0.0,
      "aoflagger": 0.02709,
      "averager": 0.0006299999999999999,
      "msout": 0.061919999999999996
    },
    "flags_by_step": {
      "preflagger": {
        "percent": 0.0,
        "flagged": 0,
        "visibilities": 19200,
        "per_channel": [
          0,
          0,
          0,
          0
        ],
        "per_antenna": [
          0,
          0,
          0
        ]
      },
      "aoflagger": {
        "percent": 6.323,
        "flagged": 1214,
        "visibilities": 19200,
        "per_channel": [
          3,
          4,
          3,
          3
        ],
        "per_antenna": [
          6,
          6,
          6
        ]
      }
    },
    "stations": [
      "CS001HBA0",
      "CS002HBA0",
      "CS003HBA0",
      "CS004HBA0",
      "CS005HBA0",
      "CS006HBA0"
    ],
    "dp3_version": "6.6.0"
  },
  {
    "name": "demo_1",
    "input": "/data/demo_data/demo_1.ms",
    "output": "/data/results/demo_1.ms",
    "log": "/data/results/logs/demo_1.log",
    "worker": "tcp://127.0.0.1:40000",
    "numthreads": 1,
    "started": "2026-11-28T04:14:06.900+00:00",
    "status": "failed",
    "reason": "DP3 exited with code 1",
    "error": "std::exception: No such MS",
    "finished": "2026-11-28T04:14:07.100+00:00",
    "duration_seconds": 0.2,
    "size_estimate_bytes": 1843200
  },
  {
    "name": "demo_2",
    "input": "/data/demo_data/demo_2.ms",
    "output": "/data/results/demo_2.ms",
    "log": "/data/results/logs/demo_2.log",
    "status": "not processed",
    "reason": "not run",
    "error": ""
  }
]
"""


def written_marker() -> list[dict[str, Any]]:
    return json.loads(WRITTEN_MARKER_JSON)
