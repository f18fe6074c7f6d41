"""Fixtures shared by the foundation tests' command-line checks."""

import pytest


@pytest.fixture
def water(tmp_path):
    """A slightly rattled water molecule written to ``tmp_path/water.xyz`` (for ``relax``)."""
    ase_io = pytest.importorskip("ase.io")
    from ase.build import molecule

    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=0)
    path = tmp_path / "water.xyz"
    ase_io.write(path, atoms)
    return path
