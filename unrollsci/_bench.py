"""Small helpers for benchmark scripts: results files, markdown tables, timers."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["markdown_table", "write_results", "Timer", "machine_info"]


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: CPU count, torch version, GPU name if any."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Render a list of dicts as a markdown table (floats in compact form)."""
    if not rows:
        return "(no rows)"
    if columns is not None:
        cols = list(columns)
    else:  # union of keys, in first-seen order (a row may add a 'note')
        cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "nan"
            a = abs(v)
            return f"{v:.3g}" if (a >= 1e-3 and a < 1e5) or a == 0 else f"{v:.2e}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def write_results(
    name: str, data: dict[str, Any], outdir: str | os.PathLike = "benchmarks/results"
) -> Path:
    """Write ``data`` (plus machine info) to ``outdir/name.json`` and return the path."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **data}
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


class Timer:
    """Context manager measuring wall time; synchronizes CUDA when used."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Timer:
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t0
