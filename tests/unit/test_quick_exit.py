"""Unit tests of Snakemake's quick ending: the final collections are skipped, the usual
exit handlers still run."""

from pathlib import Path

from dp3batch.testing.harness import run_python


def test_what_is_left_is_frozen_and_earlier_exit_handlers_still_run():
    script = (
        "import atexit, gc, sys, tempfile\n"
        # Registered first, so it runs last: after the freeze, like Snakemake's own.
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, flush=True))\n"
        "scratch = tempfile.TemporaryDirectory()\n"
        "print(scratch.name)\n"
        "from dp3batch.rule_layer.quick_exit import end_snakemake_quickly\n"
        "before = atexit._ncallbacks()\n"
        "end_snakemake_quickly()\n"
        "end_snakemake_quickly()\n"
        "print('handlers added', atexit._ncallbacks() - before)\n"
        "sys.exit(3)\n"
    )
    answer = run_python(script)
    scratch, handlers, frozen = answer.stdout.split("\n")[:3]
    assert answer.returncode == 3, answer.stderr
    assert frozen == "frozen True"
    assert not Path(scratch).exists()  # its cleanup ran as usual
    assert handlers == "handlers added 1"  # however often the workflow is read
