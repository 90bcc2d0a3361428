"""A griffe extension for the API reference: the docstrings' Sphinx roles
(``:class:`~mtlbench.harness.budget.Budget```, ``:meth:`charge```) shown as code spans
(`` `Budget` ``, `` `charge` ``), since the docstrings are read as Markdown.

Plain code, not links: a role may name a private or external object that the reference does not
document, and a link to it would fail the strict build. ``~`` keeps the last dotted component, as
in Sphinx. Hand-written because no maintained griffe extension does only this (the docstrings'
other markup, ``double backticks``, is valid Markdown already).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj|const|py:\w+):`(~?)([^`]+)`")


def _code_span(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def plain_roles(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span of its target."""
    return ROLE.sub(_code_span, text)


class SphinxRolesAsCode(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
