"""Planning's per-MS work over several processes: the same answers, in order, as one loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_python
from dp3batch.planning import parallel
from dp3batch.planning.parallel import ITEMS_PER_PROCESS, process_count

SCRIPTS = REPO / "scripts"


@pytest.mark.parametrize(
    ("items", "cores", "threads", "expected"),
    [
        (10_000, 2, 1, 2),
        (10_000, 64, 1, parallel.MAX_PROCESSES),
        (3 * ITEMS_PER_PROCESS, 8, 1, 3),
        (ITEMS_PER_PROCESS - 1, 8, 1, 1),
        (10_000, 1, 1, 1),
        (10_000, 8, 2, 1),  # never a fork beside other threads
    ],
)
def test_processes_are_started_only_when_there_is_enough_work(items, cores, threads, expected):
    assert process_count(items, cores, threads) == expected


def _run_in_a_fresh_process(code: str) -> str:
    """Run planning code where no other thread runs (a test process may hold dask's)."""
    answer = run_python("from dp3batch.planning import parallel\n" + code)
    assert answer.returncode == 0, answer.stderr[-2000:]
    return answer.stdout


def test_the_answers_are_the_loops_in_order_and_computed_by_several_processes():
    items = 3 * ITEMS_PER_PROCESS + 7
    out = _run_in_a_fresh_process(
        "import json, os, time\n"
        "parallel.usable_cores = lambda: 3\n"
        "def square(i):\n"
        "    time.sleep(0.001)  # a chunk lasts long enough for every process to take one\n"
        "    return os.getpid(), i * i\n"
        f"answers = parallel.map_over_cores(square, range({items}))\n"
        "print(json.dumps({'me': os.getpid(), 'answers': answers}))\n"
    )
    found = json.loads(out)
    assert [square for _, square in found["answers"]] == [item * item for item in range(items)]
    pids = {pid for pid, _ in found["answers"]}
    assert len(pids) == 3 and found["me"] not in pids


def test_the_first_failing_item_in_order_is_the_one_raised():
    first_bad = ITEMS_PER_PROCESS - 3  # in the first chunk; later chunks fail too
    out = _run_in_a_fresh_process(
        "def check(item):\n"
        f"    if item >= {first_bad}:\n"
        "        raise ValueError(f'item {item} is bad')\n"
        "    return item\n"
        "parallel.usable_cores = lambda: 2\n"
        "try:\n"
        f"    parallel.map_over_cores(check, list(range({2 * ITEMS_PER_PROCESS})))\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    assert out.strip() == f"item {first_bad} is bad"


def test_a_child_ended_by_ctrl_c_before_the_caller_sees_it_is_an_interrupt():
    # On a loaded machine the caller may find the pool broken before its own Ctrl-C is
    # handled; here only a child gets it. That is an interrupt, not a lost process.
    out = _run_in_a_fresh_process(
        "import os, signal, time\n"
        "parallel.usable_cores = lambda: 2\n"
        "parent = os.getpid()\n"
        "def work(item):\n"
        "    if item == 0 and os.getpid() != parent:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.001)\n"
        "    return item\n"
        "try:\n"
        f"    parallel.map_over_cores(work, list(range({2 * ITEMS_PER_PROCESS})))\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    assert out.strip() == "interrupted"


def test_ctrl_c_ends_every_process_at_once_and_quietly(tmp_path):
    # Ctrl-C reaches the whole process group: the children end without a traceback of
    # their own, the caller gets KeyboardInterrupt within a moment, and no child is left.
    script = tmp_path / "plan.py"
    script.write_text(
        "import time\n"
        "from dp3batch.planning import parallel\n"
        "parallel.usable_cores = lambda: 2\n"
        "try:\n"
        # The first child is done at once and idle, the second busy for about 10 s.
        "    parallel.map_over_cores(lambda i: i < 200 or time.sleep(0.05), list(range(400)))\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    planner = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": str(SCRIPTS)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(1.5)
    interrupted = time.monotonic()
    os.killpg(planner.pid, signal.SIGINT)
    out, err = planner.communicate(timeout=30)
    assert time.monotonic() - interrupted < 5
    assert out.strip() == "interrupted", err[-2000:]
    assert "Traceback" not in err
    leftover = subprocess.run(
        ["pgrep", "-g", str(planner.pid)], capture_output=True, text=True
    ).stdout.split()
    assert leftover == []
