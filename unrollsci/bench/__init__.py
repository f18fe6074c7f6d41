"""Benchmarks, demo sections, their problem generators and the LAMMPS reference.

Nothing in the library imports this package; ``unrollsci bench NAME`` and ``unrollsci demo``
(:mod:`unrollsci.cli`) import its modules lazily, and ``benchmarks/NAME.py`` are thin entry
points calling ``unrollsci.bench.NAME.main``.

* ``_common``: results files, figures, markdown tables, ``Timer``, argparse types;
* one module per benchmark, each with ``main(argv: list[str] | None) -> int``: ``solvers``,
  ``lista``, ``graph``, ``qeq``, ``md``, ``precond``, ``radon``, ``ct`` (``_lista_setup`` and
  ``_precond_setup`` hold the problem set-up and training of the two largest);
* ``lammps``: reference charges from LAMMPS ``fix qeq/shielded`` (tests and ``qeq``);
* ``demo``: one module per ``unrollsci demo`` section (``run_demo`` and ``FIGURES``).
"""
