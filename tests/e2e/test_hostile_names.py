"""Names a filesystem allows and DP3 reads differently: each works as named or is refused
before anything runs, and nothing outside the output directory is ever created or changed
(real DP3, real snakemake, generated MSs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from casacore import tables
from conftest import make_ms
from dp3batch.dp3.install import dp3_environment, find_dp3_executable
from dp3batch.dp3.parset import arguments_for_dp3, literal, write_parset

DP3 = find_dp3_executable()
COLUMNS = ("DATA", "FLAG", "WEIGHT_SPECTRUM", "UVW", "TIME", "ANTENNA1", "ANTENNA2")

# Each input beside a decoy (another MS) at the path DP3 would read if it misread the name.
ACCEPTED = {
    "apostrophe": ("John's data/obs_a.ms", None),
    "quote pair": ("in'q'/obs_b.ms", "inq/obs_b.ms"),
    "double quotes": ('say "hi"/obs_c.ms', "say hi/obs_c.ms"),
    "hash and equals": ("run#2=x/obs_d.ms", "run/obs_d.ms"),
    "trailing space": ("plain/obs_e.ms ", "plain/obs_e.ms"),
    "spaces and non-ASCII": ("données été/観測 f.ms", None),
}


def _rows(path: Path) -> int:
    with tables.table(str(path), ack=False) as table:
        return table.nrows()


def _columns(path: Path) -> dict[str, np.ndarray]:
    with tables.table(str(path), ack=False) as table:
        return {column: table.getcol(column) for column in COLUMNS}


def _make_inputs_with_decoys(directory: Path) -> dict[str, Path]:
    """The accepted inputs (6 time slots) and their decoys (9: DP3 reading one shows)."""
    paths = {}
    for seed, (name, decoy) in enumerate(ACCEPTED.values()):
        paths[name] = make_ms(directory / name, seed=seed, n_times=6)
        if decoy is not None:
            make_ms(directory / decoy, seed=100 + seed, n_times=9)
    return paths


def test_dp3_reads_each_literal_as_the_path_it_names(tmp_path):
    """The facts `parset` rests on, through DP3 itself: as arguments and as a parset, each
    input is read (not its decoy) and each output written where it is named."""
    inputs = _make_inputs_with_decoys(tmp_path / "in")
    for index, (name, path) in enumerate(inputs.items()):
        for form in ("arguments", "parset"):
            output = tmp_path / "out" / f"{form} {Path(name).parent}" / f"{index}.ms "
            output.parent.mkdir(parents=True)
            pairs = [("msin", literal(path)), ("msout", literal(output)), ("steps", "[]")]
            if form == "arguments":
                command = [DP3, *arguments_for_dp3(pairs)]
            else:
                write_parset(tmp_path / f"{index}.parset", pairs)
                command = [DP3, str(tmp_path / f"{index}.parset")]
            completed = subprocess.run(
                command, env=dp3_environment(), capture_output=True, text=True, timeout=120
            )
            assert completed.returncode == 0, (name, form, completed.stdout[-1500:])
            assert _rows(output) == _rows(path), (name, form)


def _tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory` but Snakemake's own, by size and modification time."""
    found = {}
    for root, directories, files in os.walk(directory):
        directories[:] = [name for name in directories if name != ".snakemake"]
        for name in files:
            path = Path(root, name)
            stat = path.lstat()
            found[str(path.relative_to(directory))] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_hostile_names_are_processed_as_named_bit_for_bit(workflow):
    """Quotes, `#`, `=`, a trailing space, non-ASCII: each output holds its own input's data,
    exactly what DP3 makes of it by hand, never its decoy's; a rerun has nothing to do."""
    inputs = _make_inputs_with_decoys(workflow.directory)
    decoys = _tree(workflow.directory / "inq")
    workflow.config["inputs"] = list(inputs)
    workflow.config["steps"] = [{"PreFlagger": None}, {"Averager": {"timestep": 2}}]
    result = workflow.run()
    assert result.returncode == 0, result.output

    for index, (name, path) in enumerate(inputs.items()):
        output = workflow.output(Path(name).name.removesuffix(".ms"))
        record = workflow.record(Path(name).name.removesuffix(".ms"))
        assert record["input"] == str(path)
        # The record's parset, rerun by hand on a plainly named copy of the same input.
        plain = workflow.directory / "plain" / f"copy{index}.ms"
        shutil.copytree(path, plain)
        rerun = workflow.directory / "plain" / f"rerun{index}.ms"
        completed = subprocess.run(
            [DP3, str(output / "dp3.parset"), f"msin={plain}", f"msout={rerun}"],
            env=dp3_environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stdout[-1500:]
        ours, by_hand = _columns(output), _columns(rerun)
        for column in COLUMNS:
            assert np.array_equal(ours[column], by_hand[column]), (name, column)
    assert _tree(workflow.directory / "inq") == decoys

    again = workflow.run()
    assert again.returncode == 0, again.output
    assert f"All {len(inputs)} MS(s)" in again.output


def _important_ms(directory: Path) -> tuple[int, dict]:
    important = make_ms(directory / "important.ms", seed=7)
    return _rows(important), _tree(directory)


REFUSED = {
    "a line break that writes DP3 parameters": (
        "inputs",
        "inj\nmsout.name=important.ms\nmsout.overwrite=true/obs.ms",
        "inj\\nmsout.name=important.ms\\nmsout.overwrite=true/obs.ms has a line break",
    ),
    "a tab": ("inputs", "tab\there/obs.ms", "tab\\there/obs.ms has a line break or another"),
    "both quotes": ("inputs", 'it\'s "x"/obs.ms', "has both ' and \""),
    "a dollar": ("inputs", "$HOME/obs.ms", "replaces by an environment variable"),
    "a glob in the name": ("inputs", "data/in[X].ms", "which DP3 reads as a pattern"),
    "a name too long": ("inputs", "long/" + "n" * 240 + ".ms", "too long a name"),
    "a multi-byte name too long": ("inputs", "long/" + "日" * 80 + ".ms", "too long a name"),
    "output_dir with a line break": ("output_dir", "out\nmsout.overwrite=true", "line break"),
    "output_dir with a dollar": ("output_dir", "out$HOME", "environment variable"),
    "extra_inputs_dir with a dollar": ("extra_inputs_dir", "cal$PWD", "environment variable"),
    "a strategy file with both quotes": ("strategy", 'it\'s "s".lua', "has both ' and \""),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_name_dp3_would_misread_is_refused_before_anything_runs(workflow, case):
    """One message naming the path (shown on one line) and what to do, even for a dry run,
    and nothing outside the output directory created or changed: the dry run that once ran
    DP3's parameter check on the injected name recreated `important.ms` empty."""
    key, value, words = REFUSED[case]
    directory = workflow.directory
    make_ms(directory / "inputs" / "good.ms", seed=1)
    if key == "inputs":
        # Made under a plain name, then renamed: casacore itself would expand a `$HOME`.
        make_ms(directory / "made.ms", seed=2)
        (directory / value).parent.mkdir(parents=True, exist_ok=True)
        os.rename(directory / "made.ms", directory / value)
        if case == "a glob in the name":
            make_ms(directory / "data" / "inX.ms", seed=3)
        workflow.config["inputs"] = ["inputs/good.ms", value]
    elif key == "strategy":
        (directory / value).write_text("-- not a strategy\n")
        workflow.config["steps"] = [{"AOFlagger": {"strategy": value}}]
    else:
        (directory / value).mkdir()
        workflow.config[key] = value
    for error in _refused_before_anything_runs(workflow):
        assert words in error


def _refused_before_anything_runs(workflow) -> list[str]:
    """The one Error line of a dry run and of a run, each refused, with nothing in the
    workflow's directory created or changed, an MS beside the inputs included."""
    directory = workflow.directory
    rows, before = _important_ms(directory)
    before.pop("test_config.yaml", None)
    errors = []
    for dry_run in (True, False):
        result = workflow.run(*(["-n"] if dry_run else []))
        assert result.returncode != 0, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(lines) == 1, result.output
        assert "Traceback" not in result.output
        after = _tree(directory)
        after.pop("test_config.yaml", None)
        assert after == before
        assert _rows(directory / "important.ms") == rows
        errors += lines
    return errors


def test_an_input_named_in_bytes_that_are_not_utf8_is_refused_before_anything_runs(workflow):
    """A directory named in Latin-1 (`café` with one byte é), found by a glob: casacore
    cannot open it, so the run says so at once, showing the byte, and changes nothing."""
    directory = workflow.directory
    make_ms(directory / "inputs" / "good" / "obs.ms", seed=1)
    make_ms(directory / "made.ms", seed=2)
    os.rename(directory / "made.ms", os.fsdecode(bytes(directory / "inputs") + b"/caf\xe9"))
    workflow.config["inputs"] = ["inputs/*/*.ms", "inputs/caf*"]
    for error in _refused_before_anything_runs(workflow):
        assert f"inputs: {directory}/inputs/caf\\xe9 is not UTF-8 text" in error
        assert "cannot open; rename it" in error


ENVIRONMENT_VARIABLE_IN = {
    "output_dir": ("output_dir", "$OBS_SCRATCH/results"),
    "an input pattern": ("inputs", "${OBS_SCRATCH}/*.ms"),
    "an input": ("inputs", "$OBS_SCRATCH/obs.ms"),
}


@pytest.mark.parametrize("case", ENVIRONMENT_VARIABLE_IN, ids=list(ENVIRONMENT_VARIABLE_IN))
def test_an_environment_variable_in_a_config_path_is_named_with_its_value(
    workflow, monkeypatch, case
):
    """`output_dir: $SCRATCH/results` in a config file is taken as written (YAML and Snakemake
    replace no variables): the run once said that `…/$SCRATCH/results` has a '$' and to
    rename it, or that `…/$SCRATCH/obs.ms` does not exist. It now says what the variable is
    and how to have it replaced, and changes nothing."""
    key, value = ENVIRONMENT_VARIABLE_IN[case]
    scratch = workflow.directory / "scratch"
    make_ms(scratch / "obs.ms", seed=1)
    monkeypatch.setenv("OBS_SCRATCH", str(scratch))
    workflow.config[key] = [value] if key == "inputs" else value
    if key == "output_dir":
        workflow.config["inputs"] = [str(scratch / "obs.ms")]
    variable = value.split("/")[0]
    shown = repr(value) if "*" in value else str(workflow.directory / value)
    for error in _refused_before_anything_runs(workflow):
        assert error.startswith(f"Error: {key}: ") and shown in error, error
        assert (
            f"has {variable} in it, taken as written: neither YAML nor Snakemake replaces "
            f"environment variables in a config file. Write the path out ({variable} is "
            f"{scratch} here), or give it on the command line, where the shell replaces it: "
            f'--config "{key}='
        ) in error
    assert not (workflow.directory / variable).exists()


def test_a_file_named_in_bytes_that_are_not_utf8_inside_an_input_is_accounted_for(workflow):
    """A file another tool left inside an MS under a Latin-1 name (`café` as one byte é): the
    MS is processed, a rerun finds it up to date, and a change of that file redoes it."""
    path = make_ms(workflow.directory / "inputs" / "obs_0.ms")
    stray = os.path.join(os.fsencode(path), b"notes caf\xe9.txt")
    with open(stray, "wb") as handle:
        handle.write(b"left here by another tool\n")
    workflow.config["inputs"] = [str(path)]
    first = workflow.run()
    assert first.returncode == 0, first.output
    assert "obs_0: done in " in first.output
    assert os.fsdecode(b"notes caf\xe9.txt") in workflow.record("obs_0")["input_files"]

    again = workflow.run()
    assert again.returncode == 0, again.output
    assert "All 1 MS(s)" in again.output and ": done in " not in again.output

    with open(stray, "ab") as handle:
        handle.write(b"and changed\n")
    changed = workflow.run()
    assert changed.returncode == 0, changed.output
    assert "obs_0: input changed" in changed.output
    assert "obs_0: done in " in changed.output
