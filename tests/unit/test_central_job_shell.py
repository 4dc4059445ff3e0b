"""Unit tests of the central rule's shell command (rule_layer.central_job_shell)."""

import shlex
import subprocess
import sys

from dp3batch.rule_layer.central_job_shell import central_job_shell


def test_the_command_names_the_python_and_script_and_leaves_the_job_s_files_to_snakemake():
    command = central_job_shell("/venv/bin/python3", "/repo/scripts/process_batch.py")
    assert command == (
        "/venv/bin/python3 /repo/scripts/process_batch.py "
        "{input.specification:q} {output.batch:q} {log:q}"
    )


def test_paths_with_spaces_quotes_and_braces_reach_the_shell_as_they_are(tmp_path):
    from snakemake.io import Log, Namedlist
    from snakemake.utils import format as snakemake_format

    script = tmp_path / "dir {x} it's ü" / "process_batch.py"
    script.parent.mkdir()
    script.write_text("import sys; print(sys.argv[1:])\n")
    # As Snakemake fills it in for the job.
    filled = snakemake_format(
        central_job_shell(sys.executable, str(script)),
        input=Namedlist(fromdict={"specification": str(tmp_path / "a b {c}.json")}),
        output=Namedlist(fromdict={"batch": "marker.json"}),
        log=Log(["job.log"]),
    )
    assert shlex.split(filled)[:2] == [sys.executable, str(script)]
    completed = subprocess.run(filled, shell=True, capture_output=True, text=True, check=True)
    expected = [str(tmp_path / "a b {c}.json"), "marker.json", "job.log"]
    assert completed.stdout.strip() == repr(expected)
