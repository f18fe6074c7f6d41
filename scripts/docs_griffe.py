"""Griffe extension for the API reference (``mkdocs.yml``): Sphinx roles in docstrings.

The docstrings use Sphinx cross-reference roles (``:func:`ista```, ``:class:`~a.b.C```)
in places; mkdocstrings renders docstrings as Markdown, where a role would show as
``:func:`` followed by code. This turns each role into a code span of its target (the last
dotted component when the target starts with ``~``, as Sphinx displays it).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def strip_roles(text: str) -> str:
    def repl(m: re.Match) -> str:
        target = m.group(2).strip()
        if m.group(1):
            target = target.split(".")[-1]
        return f"`{target}`"

    return _ROLE.sub(repl, text)


class SphinxRoles(Extension):
    """Replace Sphinx roles by code spans in every loaded docstring."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
