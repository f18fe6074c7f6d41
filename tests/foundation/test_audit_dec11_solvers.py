"""Round dec11 of the audits ("dec11" names the round, not a date): solver loose ends."""

from __future__ import annotations

import pytest
import torch

from unrollsci.operators import LinearOperator
from unrollsci.solvers import cg


class _InfAt(LinearOperator):
    """diag(1..6), with one Inf entry in the product of call ``at`` (system 1)."""

    in_shape = (6,)
    out_shape = (6,)

    def __init__(self, at: int) -> None:
        super().__init__()
        self.calls, self.at = 0, at
        self.register_buffer("d", torch.arange(1.0, 7.0, dtype=torch.float64))

    def _mv(self, v):
        self.calls += 1
        out = v * self.d
        if self.calls == self.at:
            out = out.clone()
            out[1, 0] = float("inf")
        return out

    def _rmv(self, v):
        return v * self.d


@pytest.mark.parametrize("k", [1, 2, 3])
def test_cg_inf_curvature_at_the_last_iteration_raises(k):
    """With several systems an Inf p^T A p at iteration max_iter has no later check to turn
    it into a NaN residual: it raised nothing and returned a NaN residual history."""
    b = torch.stack([torch.ones(6), torch.arange(1.0, 7.0)]).double()
    with pytest.raises(ValueError, match=r"p\^T A p = inf is not finite"):
        cg(_InfAt(k), b, max_iter=k, check=False)


def test_cg_inf_before_the_last_iteration_still_raises():
    b = torch.stack([torch.ones(6), torch.arange(1.0, 7.0)]).double()
    with pytest.raises(ValueError, match="not finite"):
        cg(_InfAt(2), b, max_iter=5, check=False)


# -- benchmarks/NAME.py unwinds on SIGTERM and Ctrl-C as `unrollsci bench NAME` does ---------

_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_every_benchmark_script_runs_through_run_command():
    import ast

    scripts = sorted((_ROOT / "benchmarks").glob("*.py"))
    assert len(scripts) > 20
    for path in scripts:
        tree = ast.parse(path.read_text())
        mains = [
            node
            for node in tree.body
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        ]
        assert len(mains) == 1, path.name
        calls = {ast.unparse(n.func) for n in ast.walk(mains[0]) if isinstance(n, ast.Call)}
        assert "run_command" in calls, f"{path.name}: __main__ does not use run_command"


def test_benchmark_script_sigterm_exits_143(tmp_path):
    """``python benchmarks/solvers.py`` was killed by SIGTERM (status -15, temporary files
    left behind); it unwinds to exit status 143 now."""
    import subprocess
    import sys

    code = (
        "import os, runpy, signal\n"
        "import unrollsci.bench.solvers as m\n"
        "def fake(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    for _ in range(10**6): sum(range(100))\n"
        "    return 0\n"
        "m.main = fake\n"
        f"runpy.run_path({str(_ROOT / 'benchmarks' / 'solvers.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 143, done.stderr.decode()[-500:]


def test_run_command_ctrl_c_is_one_line_130(capsys):
    from unrollsci._io import run_command

    def interrupted():
        raise KeyboardInterrupt

    assert run_command(interrupted) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]
    assert run_command(lambda: None) == 0 and run_command(lambda: 3) == 3
