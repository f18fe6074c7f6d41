"""Sections of ``unrollsci demo``, one module each, named as ``--only`` names them.

Each module has ``run_demo(outdir: pathlib.Path) -> list[dict]`` (rows of the section's
table) and ``FIGURES: list[str]``, the files it writes into ``outdir``.
"""
