"""The command line never loses a user's file and rejects bad arguments with one clear line.

Exit codes: 0 success (relax: converged), 1 relax not converged, 2 usage error (bad
argument, an output that exists without --force, an output that is an input), 3 relax
input/computation error (unreadable structure, unknown element). The ``demo`` and ``bench``
cases are in tests/bench/test_cli.py.
"""

from __future__ import annotations

import pytest


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# -- relax -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--cutoff", "abc"], "argument --cutoff: expected a cutoff in Angstrom"),
        (["--fmax", "-1"], "argument --fmax: expected a finite number > 0, got '-1'"),
        (["--fmax", "nan"], "argument --fmax"),
        (["--steps", "-1"], "argument --steps: expected an integer >= 0, got '-1'"),
        (["--steps", "ten"], "argument --steps"),
        (["--tol", "0"], "argument --tol"),
        (["--total-charge", "inf"], "argument --total-charge"),
        (["--params", "MISSING"], "argument --params: no such file"),
        (["--params", "MALFORMED"], "is not valid JSON"),
        (["--params", "LIST"], "must hold a JSON object"),
        (["--device", "cuda:99"], "argument --device: Device 'cuda:99'"),
        (["--device", "abacus"], "argument --device"),
        (["--out", "relaxed.bogus"], "argument --out: cannot tell a structure format"),
        (["--traj", "t.xyz"], "argument --traj: expected a file name ending in .traj"),
    ],
)
def test_relax_rejects_bad_arguments_with_exit_2(water, args, fragment, capsys, cli_status):
    folder = water.parent
    (folder / "malformed.json").write_text("{'Xe': ")
    (folder / "list.json").write_text("[1, 2]")
    subst = {
        "MISSING": str(folder / "missing.json"),
        "MALFORMED": str(folder / "malformed.json"),
        "LIST": str(folder / "list.json"),
    }
    args = [subst.get(a, a) for a in args]
    before = _files(folder)
    assert cli_status(["relax", str(water), "--cutoff", "none", *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert "unrollsci relax: error:" in err and "Traceback" not in err
    assert _files(folder) == before  # nothing written


def test_relax_missing_structure_file_exit_2(tmp_path, capsys, cli_status):
    pytest.importorskip("ase")
    assert cli_status(["relax", str(tmp_path / "nothere.xyz")]) == 2
    assert "argument file: no such file" in capsys.readouterr().err


def test_relax_unreadable_structure_exit_3(tmp_path, capsys, cli_status):
    pytest.importorskip("ase")
    junk = tmp_path / "junk.xyz"
    junk.write_text("this is not\na structure\n")
    assert cli_status(["relax", str(junk), "--cutoff", "none"]) == 3
    err = capsys.readouterr().err
    assert "unrollsci relax: error: could not read" in err and "Traceback" not in err
    assert _files(tmp_path) == ["junk.xyz"]


def test_relax_unknown_element_exit_3_keeps_existing_outputs(tmp_path, capsys, cli_status):
    """The first energy is computed before any file is opened: a failing run with --force
    leaves the previous trajectory and structure byte for byte (it used to empty the .traj)."""
    ase_io = pytest.importorskip("ase.io")
    from ase import Atoms

    path = tmp_path / "xe.xyz"
    ase_io.write(path, Atoms("XeH", positions=[[0, 0, 0], [0, 0, 1.7]]))
    old_traj, old_xyz = b"previous trajectory", b"previous structure"
    (tmp_path / "xe_relaxed.traj").write_bytes(old_traj)
    (tmp_path / "xe_relaxed.xyz").write_bytes(old_xyz)
    assert cli_status(["relax", str(path), "--cutoff", "none", "--force"]) == 3
    err = capsys.readouterr().err
    assert "unrollsci relax: error: No QEq parameters for element 'Xe'" in err
    assert "Traceback" not in err
    assert (tmp_path / "xe_relaxed.traj").read_bytes() == old_traj
    assert (tmp_path / "xe_relaxed.xyz").read_bytes() == old_xyz
    assert _files(tmp_path) == ["xe.xyz", "xe_relaxed.traj", "xe_relaxed.xyz"]  # no temp left


def test_relax_refuses_existing_output_without_force(water, capsys, cli_status):
    out = water.parent / "water_relaxed.xyz"
    out.write_text("keep me")
    assert cli_status(["relax", str(water), "--cutoff", "none"]) == 2
    err = capsys.readouterr().err
    assert "Refusing to write over the existing file" in err and "--force" in err
    assert out.read_text() == "keep me"
    assert not (water.parent / "water_relaxed.traj").exists()  # refused before anything ran
    # the existing trajectory alone is protected too
    out.unlink()
    traj = water.parent / "water_relaxed.traj"
    traj.write_bytes(b"old run")
    assert cli_status(["relax", str(water), "--cutoff", "none"]) == 2
    assert "water_relaxed.traj" in capsys.readouterr().err
    assert traj.read_bytes() == b"old run" and not out.exists()


def test_relax_force_replaces_outputs(water, capsys, cli_status):
    from ase.io import read

    out, traj = water.parent / "water_relaxed.xyz", water.parent / "water_relaxed.traj"
    out.write_text("old")
    traj.write_bytes(b"old")
    assert cli_status(["relax", str(water), "--cutoff", "none", "--force"]) == 0
    assert "converged after" in capsys.readouterr().out
    assert len(read(out)) == 3 and len(read(traj, index=":")) >= 2
    assert _files(water.parent) == ["water.xyz", "water_relaxed.traj", "water_relaxed.xyz"]


def test_relax_never_writes_over_its_input(water, capsys, cli_status):
    original = water.read_bytes()
    assert (
        cli_status(["relax", str(water), "--cutoff", "none", "--out", str(water), "--force"]) == 2
    )
    assert "it is an input of this command" in capsys.readouterr().err
    assert water.read_bytes() == original


def test_relax_trajectory_input_is_not_replaced_by_the_trajectory(water, capsys, cli_status):
    """relax a.traj --out a.xyz: the relaxation trajectory's default name is a.traj."""
    from ase.io import read, write

    src = water.parent / "a.traj"
    write(src, read(water))
    original = src.read_bytes()
    out = water.parent / "a.xyz"
    assert cli_status(["relax", str(src), "--cutoff", "none", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "it is an input of this command" in err and "--traj" in err
    assert src.read_bytes() == original and not out.exists()
    # with another trajectory name it runs; 2 steps do not converge: exit 1
    other = water.parent / "run.traj"
    argv = ["relax", str(src), "--cutoff", "none", "--out", str(out), "--traj", str(other)]
    assert cli_status([*argv, "--steps", "2"]) == 1
    assert "NOT converged after 2 steps" in capsys.readouterr().out
    assert src.read_bytes() == original
    assert len(read(other, index=":")) == 3 and len(read(out)) == 3


def test_relax_same_file_for_structure_and_trajectory(water, capsys, cli_status):
    out = water.parent / "r.traj"
    assert cli_status(["relax", str(water), "--cutoff", "none", "--out", str(out)]) == 2
    assert "Two outputs name the same file" in capsys.readouterr().err
    assert not out.exists()


def test_relax_options_before_the_file(water, capsys, cli_status):
    out = water.parent / "early.xyz"
    assert (
        cli_status(["relax", "--cutoff", "none", "--steps", "0", "--out", str(out), str(water)])
        == 1
    )
    assert "NOT converged after 0 steps" in capsys.readouterr().out
    assert out.exists() and out.with_suffix(".traj").exists()


def test_relax_help_documents_exit_codes(capsys, cli_status):
    pytest.importorskip("ase")
    assert cli_status(["relax", "-h"]) == 0
    out = capsys.readouterr().out
    assert "exit status:" in out and "--force" in out
    for line in ("0  converged", "1  not converged", "2  usage error", "3  input or computation"):
        assert line in out
