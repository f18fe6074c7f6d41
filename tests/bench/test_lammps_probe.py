"""The LAMMPS reference (unrollsci.bench.lammps): a LAMMPS install whose shared library
cannot load is reported as unavailable (ImportError), not as a failure later.

Moved from tests/chem/test_bad_input.py.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest

import unrollsci.bench


def _import_lammps_helper_with(monkeypatch, fake):
    """Import unrollsci.bench.lammps afresh with ``fake`` as the ``lammps`` package."""
    monkeypatch.setitem(sys.modules, "lammps", fake)
    monkeypatch.delitem(sys.modules, "unrollsci.bench.lammps", raising=False)
    monkeypatch.delattr(unrollsci.bench, "lammps", raising=False)
    return importlib.import_module("unrollsci.bench.lammps")


def test_lammps_that_imports_but_cannot_load_is_an_import_error(monkeypatch):
    """The package imports, the constructor fails (no libmpi.so.12): ImportError with the
    reason, which the test module turns into a skip and the benchmark into 'LAMMPS not
    available'."""
    fake = types.ModuleType("lammps")

    def broken(*args, **kwargs):
        raise OSError("libmpi.so.12: cannot open shared object file: No such file or directory")

    fake.lammps = broken
    with pytest.raises(ImportError, match="cannot start LAMMPS: OSError: libmpi.so.12"):
        _import_lammps_helper_with(monkeypatch, fake)


def test_lammps_missing_package_is_an_import_error(monkeypatch):
    with pytest.raises(ImportError, match="cannot import the 'lammps' package"):
        _import_lammps_helper_with(monkeypatch, None)


def test_lammps_that_starts_is_usable(monkeypatch):
    calls = []

    class Fine:
        def __init__(self, cmdargs=None):
            calls.append(cmdargs)

        def close(self):
            calls.append("closed")

    fake = types.ModuleType("lammps")
    fake.lammps = Fine
    mod = _import_lammps_helper_with(monkeypatch, fake)
    assert mod.lammps_unavailable_reason() is None
    assert calls[0] == ["-nocite", "-log", "none", "-screen", "none"] and calls[1] == "closed"
