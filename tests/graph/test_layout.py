"""Layout: no module of ``unrollsci.graph`` is longer than 500 lines (split along the seams)."""

from __future__ import annotations

from pathlib import Path

import unrollsci.graph

MAX_LINES = 500
PACKAGE = Path(unrollsci.graph.__file__).parent


def test_no_module_over_500_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in sorted(PACKAGE.glob("*.py"))}
    assert sizes, f"no modules found in {PACKAGE}"
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines in unrollsci.graph: {too_long}"
