"""Copies and pickles of :class:`~unrollsci.graph.GraphInverseProblem` whose cache holds
sparse compressed tensors (a model's mean adjacency, its node sample's aggregation rows).

torch can neither deep-copy such a tensor (it has no storage) nor rebuild one in another
process without printing its sparse-CSR notices, so the cache is copied and pickled with
those tensors packed as plain index and value tensors and rebuilt on the other side
(:mod:`unrollsci.operators._compressed`): a copy is independent of the original (its own
tensors) and computes the same numbers.
"""

from __future__ import annotations

from typing import Any

from ..operators._compressed import pack_tree, unpack_tree


class CopyableCache:
    """``__getstate__`` / ``__setstate__`` for a class whose ``_store`` dict is its cache
    (``copy.copy``, ``copy.deepcopy`` and ``pickle`` go through them)."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if "_store" in state:
            state["_store"] = dict(pack_tree(state["_store"]))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if "_store" in state:
            state["_store"] = dict(unpack_tree(state["_store"]))
        self.__dict__.update(state)
