"""The listed files' fingerprint lines made in C (books.native_stat): built by `make setup`,
byte for byte the lines Python makes, and Python's where it cannot be used."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest
from dp3batch.books import fingerprints, native_stat
from dp3batch.books.fingerprints import input_tree, listed_fingerprint

NAMES = (
    "table.dat",
    "table.f0",
    "ANTENNA/table.dat",
    "obs 1 'quoted' \"twice\".dat",
    "Ökosystem/ñandú 観測.f0",
    "linked.f1",
)


def python_lines(directory, names) -> bytes:
    """The lines as the fingerprint has always made them, written out here again."""
    lines = []
    for name in names:
        stat = os.stat(directory / name)
        lines.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "\n".join(lines).encode()


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "a.ms"
    for index, name in enumerate(NAMES[:-1]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * (index * 1000 + 7))
    (tmp_path / "target.bin").write_bytes(b"y" * 12345)
    (root / NAMES[-1]).symlink_to(tmp_path / "target.bin")  # followed, as os.stat does
    # A time before 1970 and nanoseconds, in the lines as they are.
    os.utime(root / "table.f0", ns=(0, -1_234_567_891))
    return root


@pytest.fixture(params=["C", "Python"])
def either_way(request, monkeypatch):
    """listed_fingerprint through the helper, and through Python alone."""
    if request.param == "Python":
        monkeypatch.setattr(fingerprints, "native_stat_lines", lambda: None)
    return request.param


def test_make_setup_built_the_helper_and_it_loads():
    assert native_stat.library_path().is_file()
    assert native_stat.native_stat_lines() is not None


def test_the_helper_s_lines_are_python_s_byte_for_byte(tree):
    stat_lines = native_stat.native_stat_lines()
    descriptor = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)

    def packed(names):
        return b"".join(name.encode() + b"\0" for name in names)

    try:
        assert stat_lines(descriptor, packed(NAMES), len(NAMES)) == python_lines(tree, NAMES)
        assert stat_lines(descriptor, b"", 0) == b""
        assert stat_lines(descriptor, packed(["table.dat", "gone.f9"]), 2) is None
    finally:
        os.close(descriptor)


def test_the_listed_fingerprint_is_the_same_either_way(tree, either_way):
    expected = hashlib.sha256(python_lines(tree, NAMES)).hexdigest()
    assert listed_fingerprint(tree, NAMES) == expected
    walked = input_tree(tree)
    assert listed_fingerprint(tree, walked.files) == walked.fingerprint
    os.utime(tree / "ANTENNA/table.dat", ns=(1, 1))
    assert listed_fingerprint(tree, walked.files) not in (None, walked.fingerprint)
    (tree / "table.dat").unlink()
    assert listed_fingerprint(tree, walked.files) is None
    assert listed_fingerprint(tree / "gone", NAMES) is None


def test_a_name_that_is_not_utf8_text_is_stat_by_python(tree):
    """Python stats it (C is given UTF-8 text only), and its line holds the name's bytes as
    they are on disk; the record that lists it keeps it through JSON."""
    undecodable = os.fsdecode(b"caf\xe9.f0")  # a byte kept as a surrogate
    (tree / undecodable).write_bytes(b"z")
    walked = input_tree(tree)
    assert undecodable in walked.files
    assert json.loads(json.dumps(walked.files)) == list(walked.files)
    assert listed_fingerprint(tree, walked.files) == walked.fingerprint
    listed = ["table.dat", undecodable]
    lines = (
        python_lines(tree, ["table.dat"])
        + b"\ncaf\xe9.f0:1:"
        + str(os.stat(tree / undecodable).st_mtime_ns).encode()
    )
    assert listed_fingerprint(tree, listed) == hashlib.sha256(lines).hexdigest()
    os.utime(tree / undecodable, ns=(1, 1))
    assert listed_fingerprint(tree, walked.files) not in (None, walked.fingerprint)


def test_a_helper_of_another_version_is_not_used(tmp_path):
    source = tmp_path / "other.c"
    source.write_text("int dp3batch_stat_lines_version(void) { return 99; }\n")
    library = tmp_path / "libother.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", library, source], check=True)
    assert native_stat.native_stat_lines(str(library)) is None
    assert native_stat.native_stat_lines(str(tmp_path / "missing.so")) is None


def test_without_a_compiler_the_setup_goes_on_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, no gcc
    monkeypatch.setattr(native_stat.sys, "prefix", str(tmp_path))
    assert native_stat.main() == 0
    assert "stat helper not built (no C compiler (cc or gcc) on PATH)" in capsys.readouterr().err
    assert not native_stat.library_path(tmp_path).exists()


def test_the_helper_builds_into_an_environment(tmp_path):
    built = native_stat.build_helper(tmp_path)
    assert built == native_stat.library_path(tmp_path) and built.is_file()
    assert native_stat.native_stat_lines(str(built)) is not None
