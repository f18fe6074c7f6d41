"""Audit round dec15 ("dec15" names the round, not a date): ``benchmarks/graph_oracle.py``
had no argument parser, so ``--help`` (or any unknown flag) ran the whole benchmark and
replaced the committed ``benchmarks/results/graph_oracle.json``. Every script in
``benchmarks/`` now parses its arguments."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_graph_oracle_help_and_bad_flag_run_nothing(tmp_path):
    script = str(ROOT / "benchmarks" / "graph_oracle.py")
    for argv, rc in ((["--help"], 0), (["--bogus"], 2)):
        proc = subprocess.run(
            [sys.executable, script, *argv], cwd=tmp_path, capture_output=True, text=True
        )
        assert proc.returncode == rc, proc.stderr
        assert "usage:" in proc.stdout + proc.stderr
    assert not (tmp_path / "benchmarks").exists()  # nothing written


def test_every_benchmark_script_parses_its_arguments():
    """Static: each script defines an ArgumentParser or hands over to a library benchmark's
    ``main`` (whose parsers the CLI tests cover)."""
    plain = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        text = path.read_text()
        if "ArgumentParser" in text or re.search(r"from unrollsci\.bench\.\w+ import .*main", text):
            continue
        plain.append(path.name)
    assert not plain, f"scripts without an argument parser: {plain}"
