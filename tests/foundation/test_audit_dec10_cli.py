"""Audit round "dec10", command lines: bad option values and bad input files are one line and
exit status 2 before any work; SIGTERM and Ctrl-C leave no temporary file; strict JSON;
long file names; ``python -m unrollsci``.

No test runs a benchmark's work: the bench cases stop right after the arguments are
parsed (``parse_only``) or replace the first heavy function with one that fails.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

import unrollsci

PACKAGE = Path(unrollsci.__file__).parent
ROOT = PACKAGE.parent


class _WorkStarted(Exception):
    """Raised where a command would have started its work."""


def _work_started(*args, **kwargs):
    raise _WorkStarted


@pytest.fixture
def parse_only(monkeypatch):
    """After ``arm(module)``, that benchmark stops with ``_WorkStarted`` if its arguments
    (and the files they name) pass the checks of ``parse_bench_args``."""
    common = importlib.import_module("unrollsci.bench._common")

    def arm(module_name: str) -> None:
        module = importlib.import_module(module_name)
        real = common.parse_bench_args

        def checked_then_stop(*args, **kwargs):
            real(*args, **kwargs)
            raise _WorkStarted

        monkeypatch.setattr(common, "parse_bench_args", checked_then_stop)
        if hasattr(module, "parse_bench_args"):
            monkeypatch.setattr(module, "parse_bench_args", checked_then_stop)

    return arm


def _one_error_line(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last
    for fragment in fragments:
        assert fragment in last, last


def _tiny_lista_checkpoint(path: Path) -> Path:
    from unrollsci.train import save_checkpoint
    from unrollsci.unrolled import LISTA

    save_checkpoint(LISTA(torch.randn(4, 6), num_layers=1), path)
    return path


# -- 1. structured --admm-* counts -----------------------------------------------------------


@pytest.mark.parametrize(
    "option", [["--admm-steps", "-3"], ["--admm-lasso-iters", "-1"], ["--admm-sides", "0"]]
)
def test_structured_admm_counts_refused(tmp_path, cli_status, parse_only, capsys, option):
    parse_only("unrollsci.bench.structured")
    argv = ["bench", "structured", "--quick", "--only", "admm", "--out", str(tmp_path)]
    assert cli_status([*argv, *option]) == 2
    _one_error_line(capsys.readouterr().err, f"argument {option[0]}")
    assert list(tmp_path.iterdir()) == []


# -- 2 and 10. SIGTERM and Ctrl-C unwind: no temporary file, one line ------------------------


class _OldSigterm(Exception):
    pass


def _raise_old(signum, frame):
    raise _OldSigterm


def _sigterm_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # the handler runs between two bytecodes
        sum(range(100))
    raise AssertionError("SIGTERM was not delivered")


def _relax_argv(water):
    return [str(water), "--cutoff", "none", "--optimizer", "FIRE", "--steps", "5"]


def test_sigterm_during_relax_leaves_no_temp_file(water, monkeypatch):
    from ase.optimize import FIRE

    from unrollsci.chem._cli import relax_main

    monkeypatch.setattr(FIRE, "run", _sigterm_self)
    previous = signal.signal(signal.SIGTERM, _raise_old)  # the old code's fate, made safe
    try:
        with pytest.raises(SystemExit) as info:
            relax_main(_relax_argv(water))
        assert signal.getsignal(signal.SIGTERM) is _raise_old  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.code == 143
    assert sorted(p.name for p in water.parent.iterdir()) == ["water.xyz"]


def test_sigterm_during_demo_exits_143(tmp_path, monkeypatch):
    from unrollsci import cli

    monkeypatch.setattr(
        importlib.import_module("unrollsci.bench.demo.solvers"), "run_demo", _sigterm_self
    )
    previous = signal.signal(signal.SIGTERM, _raise_old)
    try:
        with pytest.raises(SystemExit) as info:
            cli.main(["demo", "--only", "solvers", "--out", str(tmp_path / "d")])
        assert signal.getsignal(signal.SIGTERM) is _raise_old
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.code == 143


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_relax_is_one_line_and_130(water, monkeypatch, capsys):
    from ase.optimize import FIRE

    from unrollsci import cli

    monkeypatch.setattr(FIRE, "run", _ctrl_c)
    try:
        status = cli.main(["relax", *_relax_argv(water)])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the command")
    assert status == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]
    assert sorted(p.name for p in water.parent.iterdir()) == ["water.xyz"]


def test_ctrl_c_during_demo_is_one_line_and_130(tmp_path, monkeypatch, capsys):
    from unrollsci import cli

    monkeypatch.setattr(
        importlib.import_module("unrollsci.bench.demo.solvers"), "run_demo", _ctrl_c
    )
    try:
        status = cli.main(["demo", "--only", "solvers", "--out", str(tmp_path)])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the command")
    assert status == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]


def test_readme_lists_exit_130():
    assert "130" in (ROOT / "README.md").read_text()


# -- 3. a dangling symlink is an existing output ---------------------------------------------


def test_dangling_symlink_output_refused(tmp_path, water, cli_status, capsys):
    from unrollsci._io import OutputExistsError, check_writable

    link = tmp_path / "out.xyz"
    link.symlink_to(tmp_path / "elsewhere" / "not_yet.xyz")
    with pytest.raises(OutputExistsError, match="out.xyz"):
        check_writable([link])
    check_writable([link], force=True)  # --force: replaced (the link, not its target)
    assert cli_status(["relax", str(water), "--cutoff", "none", "--out", str(link)]) == 2
    _one_error_line(capsys.readouterr().err, "out.xyz", "--force")
    assert link.is_symlink() and not (tmp_path / "out.traj").exists()


# -- 4. relax --params values of the wrong type ----------------------------------------------


@pytest.mark.parametrize("value", [None, "abc", True, [1, 2], {"x": 1}])
def test_params_value_must_be_a_number(value):
    from unrollsci.chem._params import element_table

    with pytest.raises(TypeError, match=r"params\['O'\]\['chi'\].*got"):
        element_table(["O", "H"], {"O": {"chi": value}})


def test_params_numbers_still_accepted_and_radius_listed():
    import numpy as np

    from unrollsci.chem._params import element_table

    table = element_table(["O"], {"O": {"chi": np.float32(9.5), "eta": 13, "radius": 0.7}})
    assert table["O"]["chi"] == 9.5 and table["O"]["eta"] == 13 and table["O"]["radius"] == 0.7
    table = element_table(["O"], {"O": {"chi": np.array(9.5), "eta": np.array(13)}})
    assert table["O"]["chi"] == 9.5 and table["O"]["eta"] == 13.0  # 0-d arrays (np.load)
    for bad in (np.array(True), np.array([9.5])):
        with pytest.raises(TypeError, match=r"params\['O'\]\['chi'\]"):
            element_table(["O"], {"O": {"chi": bad}})
    with pytest.raises(ValueError, match="radius"):
        element_table(["O"], {"O": {"chi2": 1.0}})


def test_relax_params_null_is_exit_3_naming_the_key(water, tmp_path, cli_status, capsys):
    params = tmp_path / "p.json"
    params.write_text('{"O": {"chi": null}}')
    out = tmp_path / "o.xyz"
    argv = ["relax", str(water), "--cutoff", "none", "--params", str(params), "--out", str(out)]
    assert cli_status(argv) == 3
    _one_error_line(capsys.readouterr().err, "params['O']['chi']", "None")
    assert not out.exists()


# -- 5. benchmark option values --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("qeq", ["--tol", "nan"]),
        ("qeq", ["--tol", "-1"]),
        ("qeq", ["--cutoff", "-3"]),
        ("qeq", ["--seed", "-1"]),
        ("qeq", ["--rattle", "nan"]),
        ("md", ["--dt", "nan"]),
        ("md", ["--temperature", "-100"]),
        ("amg", ["--rtol", "nan"]),
        ("amg", ["--lr", "0"]),
        ("lista", ["--snr", "nan"]),
        ("lista", ["--freeze-below", "-1"]),
        ("ct", ["--lr-floor", "2"]),
        ("ct_certified", ["--photons", "-5"]),
        ("precond", ["--n", "0"]),
        ("qeq_pme", ["--accuracies", "inf"]),
        ("graph", ["--train-observed", "0.5", "1.5"]),
        ("deblur", ["--train-size", "0"]),
    ],
)
def test_bench_bad_option_value_is_usage_error(
    name, option, tmp_path, cli_status, parse_only, monkeypatch, capsys
):
    parse_only(f"unrollsci.bench.{name}")
    if name == "ct_certified":  # parses without parse_bench_args
        monkeypatch.setattr(
            importlib.import_module("unrollsci.bench.ct_certified"), "make_data", _work_started
        )
    assert cli_status(["bench", name, "--quick", "--out", str(tmp_path), *option]) == 2
    _one_error_line(capsys.readouterr().err, f"argument {option[0]}")


def test_lista_snr_inf_still_accepted():
    from unrollsci._argtypes import float_arg

    assert float_arg(inf=True)("inf") == math.inf
    assert float_arg(inf=True)("-3") == -3.0


def test_no_plain_int_or_float_option_in_benchmarks():
    files = sorted((PACKAGE / "bench").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    plain = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                kw = {k.arg: k.value for k in node.keywords}
                t = kw.get("type")
                if isinstance(t, ast.Name) and t.id in ("int", "float") and "choices" not in kw:
                    plain.append(f"{path.name}:{node.lineno}")
    assert plain == []


# -- 6. missing, corrupt and wrong-kind input files ------------------------------------------


def test_amg_load_models_missing_or_wrong_kind(tmp_path, cli_status, parse_only, capsys):
    parse_only("unrollsci.bench.amg")
    argv = ["bench", "amg", "--quick", "--variants", "sa", "--out", str(tmp_path / "o")]
    assert cli_status([*argv, "--load-models", str(tmp_path / "nope")]) == 2
    _one_error_line(capsys.readouterr().err, "--load-models", "nope")
    models = tmp_path / "models"
    models.mkdir()
    _tiny_lista_checkpoint(models / "amg_sa.pt")
    assert cli_status([*argv, "--load-models", str(models)]) == 2
    _one_error_line(capsys.readouterr().err, "amg_sa.pt", "LearnedPreconditioner")


def test_ct_certified_checkpoint_missing_or_wrong_kind(tmp_path, cli_status, monkeypatch, capsys):
    monkeypatch.setattr(
        importlib.import_module("unrollsci.bench.ct_certified"), "make_data", _work_started
    )
    argv = ["bench", "ct_certified", "--quick", "--out", str(tmp_path / "o")]
    assert cli_status([*argv, "--checkpoint", str(tmp_path / "none.pt")]) == 2
    _one_error_line(capsys.readouterr().err, "none.pt")
    wrong = _tiny_lista_checkpoint(tmp_path / "lista.pt")
    assert cli_status([*argv, "--checkpoint", str(wrong)]) == 2
    _one_error_line(capsys.readouterr().err, "lista.pt", "ConvexRidgeCT")


def test_graph_models_missing_or_wrong_kind(tmp_path, cli_status, parse_only, capsys):
    from unrollsci.bench._common import BenchInputError
    from unrollsci.bench._graph_train import load_models

    parse_only("unrollsci.bench.graph")
    argv = ["bench", "graph", "--quick", "--out", str(tmp_path / "o")]
    assert cli_status([*argv, "--load-models", str(tmp_path / "nope")]) == 2
    _one_error_line(capsys.readouterr().err, "--load-models", "nope")
    _tiny_lista_checkpoint(tmp_path / "graph_window.pt")
    with pytest.raises(BenchInputError, match="graph_window.pt"):
        load_models(tmp_path, ("window",))
    with pytest.raises(BenchInputError, match="graph_jacobi.pt.*no such file"):
        load_models(tmp_path, ("jacobi",))


@pytest.mark.parametrize(
    "content",
    ['{"config": {"models": ["LISTA"]}, "by_snr": {', '{"config": {"models": []}}', "[1, 2]", ""],
)
def test_lista_merge_bad_part(tmp_path, cli_status, capsys, content):
    part = tmp_path / "part.json"
    part.write_text(content)
    out = tmp_path / "o"
    assert cli_status(["bench", "lista", "--out", str(out), "--merge", str(part)]) == 2
    _one_error_line(capsys.readouterr().err, "part.json")
    assert not out.exists()


def test_lista_resume_missing_folder(tmp_path, cli_status, parse_only, capsys):
    parse_only("unrollsci.bench.lista")
    argv = ["bench", "lista", "--quick", "--staged", "1", "--out", str(tmp_path)]
    assert cli_status([*argv, "--resume", str(tmp_path / "nope")]) == 2
    _one_error_line(capsys.readouterr().err, "--resume", "nope")


@pytest.mark.parametrize("content", ['{"rows": [', '{"benchmark": "structured_admm_quick"}'])
def test_structured_bad_previous_results(tmp_path, cli_status, monkeypatch, capsys, content):
    admm = importlib.import_module("unrollsci.bench._structured_admm")
    monkeypatch.setattr(admm, "run_admm", _work_started)
    (tmp_path / "structured_admm_quick.json").write_text(content)
    argv = ["bench", "structured", "--quick", "--only", "admm", "--admm-sides", "4"]
    assert cli_status([*argv, "--no-progress", "--out", str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, "structured_admm_quick.json")


# -- 7. outputs that could not be written: refused before any work ---------------------------


def _deny_write(monkeypatch, folder: Path) -> None:
    """``os.access`` answers 'not writable' for ``folder`` (tests may run as root, for whom
    permission bits do not bind)."""
    real = os.access
    denied = folder.resolve()

    def access(path, mode, *args, **kwargs):
        if Path(path).resolve() == denied and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_demo_existing_unwritable_out(tmp_path, cli_status, monkeypatch, capsys):
    monkeypatch.setattr(
        importlib.import_module("unrollsci.bench.demo.solvers"), "run_demo", _work_started
    )
    out = tmp_path / "ro"
    out.mkdir()
    _deny_write(monkeypatch, out)
    assert cli_status(["demo", "--only", "solvers", "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, "writable", "ro")


def test_relax_unwritable_traj_folder(water, tmp_path, cli_status, monkeypatch, capsys):
    from ase.optimize import FIRE

    monkeypatch.setattr(FIRE, "run", _work_started)
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_write(monkeypatch, ro)
    out = tmp_path / "ok.xyz"
    argv = ["relax", *_relax_argv(water), "--out", str(out), "--traj", str(ro / "t.traj")]
    assert cli_status(argv) == 2
    _one_error_line(capsys.readouterr().err, "writable", "ro")
    assert not out.exists() and list(ro.iterdir()) == []


def test_bench_name_with_folder_refused(tmp_path, cli_status, parse_only, capsys):
    parse_only("unrollsci.bench.qeq_pme")
    argv = ["bench", "qeq_pme", "--quick", "--name", "sub/x", "--out", str(tmp_path)]
    assert cli_status(argv) == 2
    _one_error_line(capsys.readouterr().err, "sub/x")


def test_amg_save_models_checked_up_front(tmp_path, cli_status, parse_only, monkeypatch, capsys):
    parse_only("unrollsci.bench.amg")
    argv = ["bench", "amg", "--quick", "--variants", "sa", "--out", str(tmp_path / "o")]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli_status([*argv, "--save-models", str(afile)]) == 2
    _one_error_line(capsys.readouterr().err, "--save-models", "afile")
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_write(monkeypatch, ro)
    assert cli_status([*argv, "--save-models", str(ro)]) == 2
    _one_error_line(capsys.readouterr().err, "writable", "ro")


# -- 8. results files are strict JSON --------------------------------------------------------


def test_results_json_has_no_nan_tokens(tmp_path):
    import numpy as np

    from unrollsci.bench._common import write_results

    data = {
        "rows": [{"gap": float("nan"), "breakeven": float("inf"), "ok": 1.5}],
        "t": (float("-inf"), 2.0),
        "np": np.float32("nan"),
        "tensor": torch.tensor(float("inf")),
    }
    path = write_results("nan", data, tmp_path)

    def strict(token):
        raise ValueError(f"non-JSON token {token}")

    loaded = json.loads(path.read_text(), parse_constant=strict)
    # NaN is null; an infinity keeps its sign as a string float() reads back
    assert loaded["rows"] == [{"gap": None, "breakeven": "inf", "ok": 1.5}]
    assert loaded["t"] == ["-inf", 2.0] and loaded["np"] is None and loaded["tensor"] == "inf"
    assert float(loaded["t"][0]) == float("-inf")


# -- 9. a legal long file name is written atomically -----------------------------------------


def test_long_file_name_written_atomically(tmp_path):
    from unrollsci._io import atomic_write_text
    from unrollsci.chem._cli import _temp_next_to

    name = "m" * 247 + ".pt"  # 250 characters: legal
    atomic_write_text(tmp_path / name, "x")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with _temp_next_to(tmp_path / ("r" * 246 + ".traj")) as tmp:
        assert tmp.exists()
    assert [p.name for p in tmp_path.iterdir()] == [name]


# -- 11. ct_merge never rewrites its input without --force -----------------------------------


def _ct_merge():
    spec = importlib.util.spec_from_file_location("_ct_merge", ROOT / "benchmarks" / "ct_merge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ct_merge_refuses_to_rewrite_its_input(tmp_path, capsys):
    run = {"fbp": {"psnr": [1.0], "psnr_mean": 1.0, "ssim_mean": 0, "seconds_per_image": 0}}
    run["tv"] = {"psnr_mean": 2.0, "ssim_mean": 0, "seconds_per_image": 0}
    main = {"config": {}, "machine": {}, "results": run}
    main["summary"] = {"certificates": {}, "per_network_minus_tv_db": {}}
    second = {"config": {"k": 2}, "machine": {}, "summary": {"certificates": {"lip10": 10}}}
    second["results"] = {
        "fbp": {"psnr": [1.0]},
        "lip10": {"psnr_mean": 3.0, "ssim_mean": 0, "seconds_per_image": 0},
    }
    (tmp_path / "ct.json").write_text(json.dumps(main))
    (tmp_path / "second.json").write_text(json.dumps(second))
    before = (tmp_path / "ct.json").read_text()
    argv = [str(tmp_path / "ct.json"), str(tmp_path / "second.json"), str(tmp_path)]
    with pytest.raises(SystemExit) as info:
        _ct_merge().main(argv)
    assert info.value.code == 2
    assert (tmp_path / "ct.json").read_text() == before
    assert _ct_merge().main([*argv, "--force"]) == 0
    merged = json.loads((tmp_path / "ct.json").read_text())
    assert merged["results"]["lip10"]["psnr_mean"] == 3.0
    assert merged["summary"]["per_network_minus_tv_db"]["lip10"] == 3.0 - 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.json", "second.json"]


# -- 12. python -m unrollsci -----------------------------------------------------------------


def test_python_m_unrollsci():
    import subprocess

    # a fresh interpreter (runpy in this process warns when another test imported
    # unrollsci.__main__ first)
    out = subprocess.run(
        [sys.executable, "-m", "unrollsci", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"unrollsci {unrollsci.__version__}"


def test_committed_results_are_strict_json():
    """Every committed results file parses as strict JSON (no NaN/Infinity tokens)."""
    from pathlib import Path

    def strict(token):
        raise ValueError(f"non-JSON token {token}")

    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    files = sorted(root.rglob("*.json"))
    assert len(files) > 20
    for path in files:
        try:
            json.loads(path.read_text(), parse_constant=strict)
        except ValueError as exc:
            raise AssertionError(f"{path.relative_to(root)}: {exc}") from None
