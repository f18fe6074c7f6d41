"""``unrollsci relax`` when its trajectory path appears while it runs (an audit of the
command line, December 9): exit status 2 says "nothing was written", and nothing is."""

from __future__ import annotations

import ase.optimize
from ase.build import molecule
from ase.io import write


def test_relax_writes_nothing_when_the_trajectory_appears_during_the_run(
    tmp_path, monkeypatch, capsys
):
    from unrollsci.chem._cli import EXIT_USAGE, relax_main

    monkeypatch.chdir(tmp_path)
    m = molecule("H2O")
    m.rattle(0.05, seed=0)
    write("h2o.xyz", m)
    real_run = ase.optimize.BFGS.run

    def run(self, *args, **kwargs):  # another process creates the trajectory meanwhile
        out = real_run(self, *args, **kwargs)
        (tmp_path / "r_out.traj").write_text("someone else's trajectory\n")
        return out

    monkeypatch.setattr(ase.optimize.BFGS, "run", run)
    code = relax_main(["h2o.xyz", "--cutoff", "none", "--steps", "2", "--out", "r_out.xyz"])
    assert code == EXIT_USAGE
    assert "appeared while this command ran" in capsys.readouterr().err
    # the structure was published before the trajectory was refused; it is taken back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h2o.xyz", "r_out.traj"]
    assert (tmp_path / "r_out.traj").read_text() == "someone else's trajectory\n"
