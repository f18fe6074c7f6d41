"""unrollsci's entry in ASE's plugin collection (entry-point group ``ase.plugins``).

ASE >= 3.29 collects the ``__ase_plugins__`` of every module registered in that group
(``ase._4.plugins.plugins``); this module offers :class:`~unrollsci.chem.QEqCalculator`
there as ``"unrollsci_qeq"``. The set is built on first access (module ``__getattr__``), so
that loading the entry point imports neither torch nor ASE's plugin package (which loads
the entry points itself: an import of it from here would be circular). On an ASE without
the plugin package the set is empty, so older ASE versions are unaffected.

Example:
    >>> from unrollsci.chem import _ase_plugin
    >>> _ase_plugin.PLUGIN_NAME  # ASE >= 3.29: ase._4.plugins.plugins.calculators lists it
    'unrollsci_qeq'
"""

from __future__ import annotations

from functools import cache
from typing import Any

__all__: list[str] = []

#: the name under which ASE lists the calculator
PLUGIN_NAME = "unrollsci_qeq"


@cache
def _plugins() -> frozenset[Any]:
    try:
        from ase._4.plugins.plugin import CalculatorPlugin
    except ImportError:  # ASE < 3.29: no plugin collection, nothing to register
        return frozenset()
    plugin = CalculatorPlugin(
        PLUGIN_NAME,
        citation="unrollsci: charge equilibration (QEq) with forces that are derivatives "
        "of the returned energy",
        # a string, resolved only when ASE asks for the class: no torch import before
        implementation="unrollsci.chem.QEqCalculator",
    )
    return frozenset({plugin})


def __getattr__(name: str) -> Any:
    if name == "__ase_plugins__":
        return set(_plugins())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
