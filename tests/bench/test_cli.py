"""``unrollsci demo`` and ``unrollsci bench NAME`` on the command line: sections, bad
arguments (exit 2, one clear line) and results files that a quick run never replaces.

Moved from tests/foundation/test_gd_train_cli.py and tests/foundation/test_bad_input_cli.py.
"""

from __future__ import annotations

import importlib
import json

import pytest

from unrollsci import cli
from unrollsci.bench._common import figure_path, results_name, save_figure, write_results


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_cli_demo_solvers_section(tmp_path, capsys):
    assert cli.main(["demo", "--only", "solvers", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Classical solvers" in out and "| fista |" in out
    assert (tmp_path / "solvers_convergence.png").exists()


def test_cli_unknown_benchmark(capsys):
    assert cli.main(["bench", "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


# -- demo ------------------------------------------------------------------------------------


def test_demo_unknown_section_exit_2(tmp_path, capsys, cli_status):
    assert cli_status(["demo", "--only", "bogus", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err
    for name in ("solvers", "unrolled", "graph", "chem", "precond", "imaging"):
        assert name in err
    assert not (tmp_path / "d").exists()


def test_demo_out_naming_a_file_exit_2(tmp_path, capsys, cli_status):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert cli_status(["demo", "--only", "solvers", "--out", str(f)]) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert cli_status(["demo", "--only", "solvers", "--out", str(f / "sub")]) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert f.read_text() == "mine"


def test_demo_refuses_to_replace_a_figure_without_force(tmp_path, capsys, cli_status):
    fig = tmp_path / "solvers_convergence.png"
    fig.write_bytes(b"my figure")
    assert cli_status(["demo", "--only", "solvers", "chem", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "unrollsci demo: error: Refusing to write over the existing file" in captured.err
    assert "--force" in captured.err and "Traceback" not in captured.err
    assert "Classical solvers" not in captured.out  # refused before any section ran
    assert fig.read_bytes() == b"my figure"


def test_demo_force_replaces_exactly_the_declared_figures(tmp_path, capsys, cli_status):
    from unrollsci.bench.demo.solvers import FIGURES

    (tmp_path / FIGURES[0]).write_bytes(b"old")
    assert cli_status(["demo", "--only", "solvers", "--out", str(tmp_path), "--force"]) == 0
    assert "Classical solvers" in capsys.readouterr().out
    assert _files(tmp_path) == sorted(FIGURES)  # declared up front, no temporary file left
    assert (tmp_path / FIGURES[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_demo_section_declares_its_figures():
    for _, module in cli.DEMO_SECTIONS:
        figures = importlib.import_module(module).FIGURES
        assert isinstance(figures, list) and all(isinstance(f, str) for f in figures), module
        assert len(set(figures)) == len(figures)
    names = [f for _, m in cli.DEMO_SECTIONS for f in importlib.import_module(m).FIGURES]
    assert len(set(names)) == len(names)  # sections never write the same file


# -- bench -----------------------------------------------------------------------------------


def test_quick_results_names():
    assert results_name("radon") == "radon"
    assert results_name("radon", quick=True) == "radon_quick"
    assert results_name("solvers_quick", quick=True) == "solvers_quick"
    assert figure_path("out", "graph_convergence.png", quick=True).name == (
        "graph_convergence_quick.png"
    )
    assert figure_path("out", "qeq.png").name == "qeq.png"


def test_write_results_quick_never_replaces_full_results(tmp_path):
    full = tmp_path / "radon.json"
    full.write_bytes(b'{"full": "results"}')
    path = write_results("radon", {"x": 1.5}, tmp_path, quick=True)
    assert path == tmp_path / "radon_quick.json"
    assert full.read_bytes() == b'{"full": "results"}'
    data = json.loads(path.read_text())
    assert data["benchmark"] == "radon_quick" and data["x"] == 1.5
    # a full run replaces the full results (that is its job), leaving no temporary file
    write_results("radon", {"x": 2.5}, tmp_path)
    assert json.loads(full.read_text())["x"] == 2.5
    assert _files(tmp_path) == ["radon.json", "radon_quick.json"]


def test_write_results_failure_keeps_previous_file(tmp_path):
    full = tmp_path / "qeq.json"
    full.write_bytes(b"previous")
    with pytest.raises(TypeError):  # not JSON serializable: nothing replaced
        write_results("qeq", {"bad": object()}, tmp_path)
    assert full.read_bytes() == b"previous" and _files(tmp_path) == ["qeq.json"]


def test_save_figure_is_atomic(tmp_path):
    class Broken:
        def savefig(self, f, **kw):
            f.write(b"half a figure")
            raise RuntimeError("disk full")

    png = tmp_path / "plot.png"
    png.write_bytes(b"old figure")
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(Broken(), png, dpi=100)
    assert png.read_bytes() == b"old figure" and _files(tmp_path) == ["plot.png"]

    class Fine:
        def savefig(self, f, format=None, **kw):
            assert format == "png" and kw == {"dpi": 100}
            f.write(b"new figure")

    save_figure(Fine(), png, dpi=100)
    assert png.read_bytes() == b"new figure" and _files(tmp_path) == ["plot.png"]


@pytest.mark.parametrize(
    ("name", "args", "module"),
    [
        ("qeq", ["--reps", "2", "--repeats", "1", "--no-lammps"], None),
        ("radon", [], "skimage"),
    ],
)
def test_quick_bench_leaves_full_results_byte_identical(tmp_path, name, args, module, capsys):
    if module:
        pytest.importorskip(module)
    full = tmp_path / f"{name}.json"
    full.write_bytes(b'{"committed": "full results"}\n')
    assert cli.main(["bench", name, "--quick", *args, "--out", str(tmp_path)]) == 0
    assert full.read_bytes() == b'{"committed": "full results"}\n'
    quick = json.loads((tmp_path / f"{name}_quick.json").read_text())
    assert quick["benchmark"] == f"{name}_quick"
    assert all(f == full.name or f.startswith(f"{name}_quick") for f in _files(tmp_path)), _files(
        tmp_path
    )


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["bench", "solvers", "--device", "cuda:99"], "argument --device: Device 'cuda:99'"),
        (["bench", "md", "--steps", "0"], "argument --steps: expected an integer >= 1"),
        (["bench", "qeq", "--threads", "-2"], "argument --threads"),
        (["bench", "radon", "--out", "FILE"], "is an existing file, not a folder"),
        (["bench", "lista", "--out", "FILE/sub"], "is an existing file, not a folder"),
    ],
)
def test_bench_bad_arguments_exit_2(tmp_path, argv, fragment, capsys, cli_status):
    f = tmp_path / "file.txt"
    f.write_text("x")
    argv = [a.replace("FILE", str(f)) for a in argv]
    assert cli_status(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert f.read_text() == "x"


def test_bench_lista_merge_never_writes_over_a_part(tmp_path, capsys, cli_status):
    part = tmp_path / "lista.json"
    part.write_bytes(b"{}")
    argv = ["bench", "lista", "--out", str(tmp_path), "--merge", str(part)]
    assert cli_status(argv) == 2
    assert "it is an input of this command" in capsys.readouterr().err
    assert part.read_bytes() == b"{}"
    assert cli_status([*argv[:-1], str(tmp_path / "nope.json")]) == 2
    assert "--merge: no such file" in capsys.readouterr().err
