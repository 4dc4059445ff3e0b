"""Unit tests of the H5Parm inspection: which ApplyCal options a file gets, which files are
refused (with a message naming the file), and how the choice reaches the DP3 parameters."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import parse_steps
from dp3batch.dp3.h5parm import H5ParmError, applycal_parameters, read_h5parm
from dp3batch.dp3.parameters import parameters_fingerprint
from dp3batch.dp3.translation import chain_parameters
from dp3batch.planning.plan import make_plan
from h5parm_writer import SoltabData, identity_soltabs, write_h5parm

ANTENNAS = ["CS001HBA0", "CS002HBA0", "CS003HBA0"]


def write(path: Path, soltabs: list[SoltabData]) -> Path:
    return write_h5parm(path, soltabs, ANTENNAS)


def soltab(name: str, soltab_type: str, pols: list[str] | None, value: float = 0.0) -> SoltabData:
    axes = {"ant": ANTENNAS, **({"pol": pols} if pols else {})}
    shape = tuple(len(labels) for labels in axes.values())
    return SoltabData(name, soltab_type, axes, np.full(shape, value))


def options(path: Path, **user) -> dict:
    return applycal_parameters(read_h5parm(path, user.get("solset")), user)


# --- what each valid layout becomes -------------------------------------------------------


def test_one_soltab_is_applied_by_name(tmp_path):
    path = write(tmp_path / "phase.h5", identity_soltabs("scalarphase", ANTENNAS))
    assert options(path) == {"correction": "phase000"}


@pytest.mark.parametrize(
    ("soltab_type", "pols"),
    [
        ("amplitude", ["XX", "YY"]),
        ("phase", None),
        ("scalarphase", None),
        ("tec", None),
        ("clock", ["XX", "YY"]),
        ("rotationmeasure", None),
    ],
)
def test_any_single_soltab_type_dp3_applies_is_accepted(tmp_path, soltab_type, pols):
    path = write(tmp_path / "one.h5", [soltab("sol", soltab_type, pols)])
    assert options(path) == {"correction": "sol"}


def test_diagonal_amplitude_and_phase_become_two_substeps(tmp_path):
    # The phase soltab first in the file: the sub-steps still name each by its type.
    amplitude, phase = identity_soltabs("diagonal", ANTENNAS)
    path = write(tmp_path / "diagonal.h5", [phase, amplitude])
    assert options(path) == {
        "steps": ["amplitude", "phase"],
        "amplitude.correction": "amplitude000",
        "phase.correction": "phase000",
    }


def test_scalar_amplitude_and_phase_become_two_substeps(tmp_path):
    path = write(
        tmp_path / "scalar.h5", [soltab("amp", "amplitude", None), soltab("ph", "phase", None)]
    )
    assert options(path) == {
        "steps": ["amplitude", "phase"],
        "amplitude.correction": "amp",
        "phase.correction": "ph",
    }


def test_full_jones_amplitude_and_phase_become_fulljones_with_their_names(tmp_path):
    pols = ["XX", "XY", "YX", "YY"]
    path = write(
        tmp_path / "full.h5", [soltab("ph1", "phase", pols), soltab("amp7", "amplitude", pols)]
    )
    assert options(path) == {"correction": "fulljones", "soltab": ["amp7", "ph1"]}


def test_read_h5parm_reports_types_axes_and_polarisations(tmp_path):
    path = write(tmp_path / "full.h5", identity_soltabs("fulljones", ANTENNAS, [1.0, 2.0], [1e8]))
    h5parm = read_h5parm(path)
    assert h5parm.solset == "sol000"
    amplitude = h5parm.soltab("amplitude000")
    assert amplitude.type == "amplitude"
    assert amplitude.axes == ("time", "freq", "ant", "pol")
    assert amplitude.shape == (2, 1, 3, 4)
    assert amplitude.polarisations == ("XX", "XY", "YX", "YY")
    assert amplitude.is_full_jones


def test_written_h5parm_has_antenna_and_source_tables(tmp_path):
    path = write(tmp_path / "phase.h5", identity_soltabs("scalarphase", ANTENNAS))
    with h5py.File(path, "r") as handle:
        solset = handle["sol000"]
        assert [name.decode() for name in solset["antenna"]["name"]] == ANTENNAS
        assert len(solset["source"]) == 1
        assert solset["phase000"].attrs["TITLE"] == b"phase"
        assert solset["phase000"]["val"].attrs["AXES"] == b"ant"


# --- the user's own choice ----------------------------------------------------------------


def test_user_correction_is_kept_and_nothing_added(tmp_path):
    path = write(tmp_path / "diagonal.h5", identity_soltabs("diagonal", ANTENNAS))
    assert options(path, correction="phase000") == {}


def test_user_fulljones_soltabs_and_substeps_are_kept(tmp_path):
    path = write(tmp_path / "full.h5", identity_soltabs("fulljones", ANTENNAS))
    assert options(path, correction="fulljones", soltab=["amplitude000", "phase000"]) == {}
    path = write(tmp_path / "diagonal.h5", identity_soltabs("diagonal", ANTENNAS))
    chosen = {"steps": ["a", "p"], "a.correction": "amplitude000", "p.correction": "phase000"}
    assert options(path, **chosen) == {}


def test_user_choice_still_validates_the_file(tmp_path):
    # Three soltabs are fine when the user says which to apply, but that one must exist.
    tables = [*identity_soltabs("diagonal", ANTENNAS), soltab("tec000", "tec", None)]
    path = write(tmp_path / "three.h5", tables)
    assert options(path, correction="tec000") == {}
    with pytest.raises(H5ParmError, match="has no soltab 'phase001'") as caught:
        options(path, correction="phase001")
    assert str(path) in str(caught.value)
    assert "amplitude000, phase000, tec000" in str(caught.value)
    with pytest.raises(H5ParmError, match="has no soltab 'amp'"):
        options(path, correction="fulljones", soltab=["amp", "phase000"])


def test_user_solset_picks_one_of_several(tmp_path):
    path = write(tmp_path / "two.h5", identity_soltabs("scalarphase", ANTENNAS))
    with h5py.File(path, "a") as handle:
        handle.copy("sol000", "sol001")
    assert options(path, solset="sol001") == {"correction": "phase000"}
    with pytest.raises(H5ParmError, match="has no solset 'sol002'"):
        options(path, solset="sol002")


# --- rejected layouts ---------------------------------------------------------------------


def no_solset(path: Path) -> None:
    h5py.File(path, "w").close()


def several_solsets(path: Path) -> None:
    write(path, identity_soltabs("scalarphase", ANTENNAS))
    with h5py.File(path, "a") as handle:
        handle.copy("sol000", "sol001")


def no_soltab(path: Path) -> None:
    write(path, [])


def three_soltabs(path: Path) -> None:
    write(path, [*identity_soltabs("diagonal", ANTENNAS), soltab("tec000", "tec", None)])


def unknown_type(path: Path) -> None:
    write(path, [soltab("bandpass000", "bandpass", ["XX", "YY"])])


def missing_title(path: Path) -> None:
    write(path, identity_soltabs("scalarphase", ANTENNAS))
    with h5py.File(path, "a") as handle:
        del handle["sol000/phase000"].attrs["TITLE"]


def two_phases(path: Path) -> None:
    write(path, [soltab("phase000", "phase", ["XX", "YY"]), soltab("phase001", "phase", None)])


def mismatched_polarisations(path: Path) -> None:
    write(
        path,
        [soltab("amplitude000", "amplitude", ["XX", "YY"]), soltab("phase000", "phase", None)],
    )


def lone_full_jones_phase(path: Path) -> None:
    write(path, [soltab("phase000", "phase", ["XX", "XY", "YX", "YY"])])


def unknown_polarisations(path: Path) -> None:
    write(path, [soltab("phase000", "phase", ["XX", "YX"])])


def val_shape_not_matching_axes(path: Path) -> None:
    # Two polarisations declared, values for three.
    axes = {"ant": ANTENNAS, "pol": ["XX", "YY"]}
    write(path, [SoltabData("phase000", "phase", axes, np.zeros((3, 3)))])


def weight_shape_not_matching_val(path: Path) -> None:
    axes = {"ant": ANTENNAS}
    write(path, [SoltabData("phase000", "phase", axes, np.zeros(3), np.ones(2))])


def axis_without_labels(path: Path) -> None:
    write(path, identity_soltabs("scalarphase", ANTENNAS))
    with h5py.File(path, "a") as handle:
        handle["sol000/phase000/val"].attrs["AXES"] = np.bytes_("time")
        handle["sol000/phase000/weight"].attrs["AXES"] = np.bytes_("time")


def several_directions(path: Path) -> None:
    axes = {"ant": ANTENNAS, "dir": ["[a]", "[b]"]}
    write(path, [SoltabData("phase000", "phase", axes, np.zeros((3, 2)))])


def not_hdf5(path: Path) -> None:
    path.write_text("these are not solutions\n")


INVALID_LAYOUTS = [
    (no_solset, "has no solset"),
    (several_solsets, "has 2 solsets (sol000, sol001)"),
    (no_soltab, "solset sol000 has no soltab"),
    (three_soltabs, "has 3 soltabs (amplitude000, phase000, tec000)"),
    (unknown_type, "unknown soltab type 'bandpass'"),
    (missing_title, "soltab phase000: has no TITLE attribute"),
    (two_phases, "two soltabs must be one amplitude and one phase"),
    (mismatched_polarisations, "has polarisations XX,YY but the phase soltab phase000 has none"),
    (lone_full_jones_phase, "a full-Jones solution needs both"),
    (unknown_polarisations, "polarisations XX,YX are neither diagonal"),
    (val_shape_not_matching_axes, "have shape (3, 3), but the axes ant=3, pol=2 make (3, 2)"),
    (weight_shape_not_matching_val, "'val' has shape (3,) but 'weight' has (2,)"),
    (axis_without_labels, "axis 'time' (named in AXES) has no 1-D 'time' dataset"),
    (several_directions, "has 2 directions; set the applycal `direction`"),
    (not_hdf5, "cannot be read as an HDF5 file"),
]
LAYOUT_IDS = [make.__name__ for make, _ in INVALID_LAYOUTS]


@pytest.mark.parametrize(("make", "message"), INVALID_LAYOUTS, ids=LAYOUT_IDS)
def test_invalid_layout_is_rejected_naming_the_file(tmp_path, make, message):
    path = tmp_path / "solutions.h5"
    make(path)
    with pytest.raises(H5ParmError) as caught:
        options(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "make", [missing_title, val_shape_not_matching_axes, weight_shape_not_matching_val]
)
def test_a_refused_soltab_leaves_h5py_free_for_other_threads(tmp_path, make):
    """h5py's iterator holds its global lock while suspended: one abandoned by the refusal
    (its traceback still alive, as in a process that logs the error and goes on) kept every
    other thread out of h5py, and a thread that freed an h5py object hung there."""
    path = tmp_path / "solutions.h5"
    make(path)
    with pytest.raises(H5ParmError) as caught:
        read_h5parm(path)
    answers: list[int] = []  # the solsets the other thread found

    def other_thread() -> None:
        with h5py.File(path, "r") as handle:
            answers.append(len(list(handle)))

    thread = threading.Thread(target=other_thread, daemon=True)
    thread.start()
    thread.join(10)
    assert answers == [1], f"h5py is still locked by the refused read ({caught.value})"


@pytest.mark.parametrize(("make", "message"), INVALID_LAYOUTS, ids=LAYOUT_IDS)
def test_invalid_layout_stops_the_plan_before_dp3_runs(tmp_path, make, message):
    """make_plan, as the rule layer calls it, refuses the file with one ConfigError naming the
    step and the file; the DP3 executable (a script that leaves a mark) is never started."""
    (tmp_path / "calibration").mkdir()
    make(tmp_path / "calibration" / "solutions.h5")
    mark = tmp_path / "dp3_ran"
    fake_dp3 = tmp_path / "DP3"
    fake_dp3.write_text(f"#!/bin/sh\ntouch {mark}\necho DP3 6.6.0\n")
    fake_dp3.chmod(fake_dp3.stat().st_mode | stat.S_IXUSR)
    config = {
        "inputs": ["inputs/*.ms"],
        "extra_inputs_dir": "calibration",
        "dp3_executable": str(fake_dp3),
        "steps": [{"PreFlagger": None}, {"ApplyCal": {"parmdb": "solutions.h5"}}],
    }
    with pytest.raises(ConfigError) as caught:
        make_plan(config, tmp_path)
    text = str(caught.value)
    assert text.startswith(f"steps: applycal parmdb {tmp_path / 'calibration' / 'solutions.h5'}: ")
    assert message in text
    assert not mark.exists()


# --- the translation reflects the file ----------------------------------------------------


def test_chain_parameters_carry_the_expansion_after_the_users_parameters(tmp_path):
    write(tmp_path / "diagonal.h5", identity_soltabs("diagonal", ANTENNAS))
    chain = parse_steps([{"ApplyCal": {"parmdb": "diagonal.h5", "updateweights": True}}])
    assert chain_parameters(chain, str(tmp_path)).pairs()[2:] == [
        ("applycal.type", "applycal"),
        ("applycal.parmdb", str(tmp_path / "diagonal.h5")),
        ("applycal.updateweights", "true"),
        ("applycal.steps", "[amplitude,phase]"),
        ("applycal.amplitude.correction", "amplitude000"),
        ("applycal.phase.correction", "phase000"),
    ]


def test_expansion_keys_are_not_taken_for_files(tmp_path):
    write(tmp_path / "full.h5", identity_soltabs("fulljones", ANTENNAS))
    parameters = chain_parameters(parse_steps([{"ApplyCal": {"parmdb": "full.h5"}}]), str(tmp_path))
    assert ("applycal.soltab", "[amplitude000,phase000]") in parameters.pairs()
    assert parameters.file_parameters() == [("applycal.parmdb", str(tmp_path / "full.h5"))]


def test_fingerprint_follows_what_the_file_makes_dp3_do(tmp_path):
    """Replacing a diagonal solution by a full-Jones one at the same path changes the DP3
    options, hence the parameters fingerprint (the content fingerprint changes as well)."""
    path = tmp_path / "solutions.h5"
    chain = parse_steps([{"ApplyCal": {"parmdb": "solutions.h5"}}])

    def fingerprint() -> str:
        parameters = chain_parameters(chain, str(tmp_path))
        files = {key for key, _ in parameters.file_parameters()}
        return parameters_fingerprint(parameters.pairs(), files)

    write(path, identity_soltabs("diagonal", ANTENNAS))
    diagonal = fingerprint()
    write(path, identity_soltabs("fulljones", ANTENNAS))
    assert fingerprint() != diagonal


def test_missing_parmdb_is_left_to_the_extra_inputs_check(tmp_path):
    chain = parse_steps([{"ApplyCal": {"parmdb": "nothing_here.h5"}}])
    parameters = chain_parameters(chain, str(tmp_path))
    assert not any(
        key.endswith((".correction", ".steps", ".soltab")) for key, _ in parameters.pairs()
    )


def test_parmdb_without_h5_in_its_name_is_refused(tmp_path):
    write(tmp_path / "solutions.hdf5", identity_soltabs("scalarphase", ANTENNAS))
    chain = parse_steps([{"ApplyCal": {"parmdb": "solutions.hdf5"}}])
    with pytest.raises(ConfigError, match="contains '.h5'; rename it") as caught:
        chain_parameters(chain, str(tmp_path))
    assert str(tmp_path / "solutions.hdf5") in str(caught.value)
