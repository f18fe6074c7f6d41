"""Audit (dec 9) of file output and the bench command line: a rewritten file keeps its
permission bits; a results path that cannot be written is refused before the benchmark
runs (exit 2, one line); ``bench ct_certified`` refuses an existing output with exit 2, not
a traceback; ``unrollsci bench --help`` exits 0 and every benchmark's help names
``unrollsci bench NAME``."""

from __future__ import annotations

import importlib
import os
import stat

import pytest

from unrollsci import cli
from unrollsci._io import atomic_write_text
from unrollsci.bench._common import check_results_paths, write_results, write_text


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# (1) publish keeps the permission bits of the file it replaces


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604], ids=oct)
def test_rewrite_keeps_the_permission_bits_of_the_replaced_file(tmp_path, mode):
    path = tmp_path / "model.pt"
    atomic_write_text(path, "first")
    os.chmod(path, mode)
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert _mode(path) == mode, f"Expected {oct(mode)} kept (got {oct(_mode(path))})"


def test_new_file_gets_the_umask_default(tmp_path):
    umask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "new.txt") == 0o640


# (4) a results path that cannot be written is refused before the benchmark runs


#: benchmark -> (extra arguments, the results name it writes with --quick)
_RESULTS = {
    "solvers": ([], "solvers"),
    "lista": ([], "lista"),
    "graph": ([], "graph"),
    "qeq": ([], "qeq"),
    "qeq_pme": ([], "qeq_pme"),
    "md": ([], "md"),
    "precond": ([], "precond"),
    "radon": ([], "radon"),
    "ct": ([], "ct"),
    "ct_certified": ([], "ct_certified"),
    "structured": ([], "structured_group"),
    "deblur": ([], "deblur"),
    "amg": ([], "amg"),
    "distributed": ([], "distributed"),
}


def test_every_benchmark_is_listed():
    from unrollsci.cli import BENCHMARKS

    assert set(_RESULTS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(_RESULTS))
def test_bench_results_path_that_is_a_directory_is_refused_before_the_run(
    name, tmp_path, capsys, cli_status
):
    extra, stem = _RESULTS[name]
    (tmp_path / f"{stem}_quick.json").mkdir()
    # the check is the benchmark's own (``benchmarks/NAME.py`` runs the same main)
    assert cli_status(["bench", name, "--quick", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert "error: Expected" in err and "directory" in err, err
    assert f"{stem}_quick.json" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}_quick.json"]


@pytest.mark.parametrize(
    "argv, stem",
    [
        (["precond", "--name", "mine"], "mine"),
        (["lista", "--tails", "x.pt"], "lista_tails"),
        (["lista", "--floors", "x.pt", "--name", "fl"], "fl"),
        (["md", "--equal-drift"], "md_equal_drift"),
        (["structured", "--only", "admm"], "structured_admm"),
        (["ct", "--size", "128"], "ct_128"),
        (["graph_seeds", "eval", "somewhere", "--name", "ev"], "ev"),
    ],
)
def test_bench_results_name_follows_the_options(argv, stem, tmp_path, capsys):
    """``--name`` and the modes that write another file are checked under that file's
    name, also when the benchmark module's ``main`` is called directly."""
    (tmp_path / f"{stem}.json").mkdir()
    module = importlib.import_module(f"unrollsci.bench.{argv[0]}")
    with pytest.raises(SystemExit) as exc:
        module.main([*argv[1:], "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert f"{stem}.json" in capsys.readouterr().err


def test_check_results_paths(tmp_path, monkeypatch):
    assert check_results_paths("x", tmp_path / "new" / "dir", quick=True) == [
        tmp_path / "new" / "dir" / "x_quick.json"
    ]
    assert not (tmp_path / "new").exists()  # nothing is created
    (tmp_path / "x.md").mkdir()
    with pytest.raises(IsADirectoryError, match=r"Expected a file path .*x\.md"):
        check_results_paths("x", tmp_path, suffixes=(".json", ".md"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError, match="Expected a folder for the results"):
        check_results_paths("x", tmp_path / "afile" / "sub")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as a user without write access
    with pytest.raises(PermissionError, match="Expected a writable folder"):
        check_results_paths("y", tmp_path)


def test_writers_name_a_directory_in_place_of_the_file(tmp_path):
    (tmp_path / "r.json").mkdir()
    (tmp_path / "r.md").mkdir()
    with pytest.raises(IsADirectoryError, match=r"Expected a file path .*r\.json"):
        write_results("r", {"a": 1}, tmp_path)
    with pytest.raises(IsADirectoryError, match=r"Expected a file path .*r\.md"):
        write_text(tmp_path / "r.md", "text")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# (5) bench ct_certified: an existing output or a directory in its place: exit 2, one line


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_ct_certified_refuses_existing_output_with_exit_2(tmp_path, capsys, kind, cli_status):
    from unrollsci.bench.ct_certified import main

    if kind == "file":
        target = tmp_path / "ct_certified_quick.json"
        target.write_text('{"precious": 1}')
        fragment = "Refusing to write over the existing file"
    else:
        target = tmp_path / "ct_certified_quick.md"
        target.mkdir()
        fragment = "is a directory"
    assert main(["--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unrollsci bench ct_certified: error: ") and fragment in err
    assert "Traceback" not in err
    assert cli_status(["bench", "ct_certified", "--quick", "--out", str(tmp_path)]) == 2
    assert fragment in capsys.readouterr().err
    if kind == "file":
        assert target.read_text() == '{"precious": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


# (12) bench --help, and each benchmark's program name


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_bench_help_exits_0_and_lists_the_benchmarks(capsys, flag, cli_status):
    assert cli_status(["bench", flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: unrollsci bench")
    assert all(name in out for name in cli.BENCHMARKS)


def test_bench_without_a_name_is_a_usage_error(capsys, cli_status):
    assert cli_status(["bench"]) == 2
    assert "required: NAME" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ct_certified", "distributed", "amg"])
def test_benchmark_help_names_unrollsci_bench(capsys, name, cli_status):
    assert cli_status(["bench", name, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: unrollsci bench {name} ")
