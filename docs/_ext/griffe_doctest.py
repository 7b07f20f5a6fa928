"""A griffe extension that lets the API reference render telemagg's docstrings.

telemagg's docstrings are plain text with reStructuredText literals (````x````, roles such as
``:class:`Release```) and doctest examples (``>>>``). Markdown would read ``>>>`` as nested
block quotes, so this wraps every doctest run in a ``pycon`` code block and turns the
reStructuredText literals into Markdown code spans. It changes only what the site shows.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc):`~?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")


def markdown(text: str) -> str:
    """Doctest runs fenced as ``pycon``; reST roles and literals as Markdown code spans."""
    out: list[str] = []
    in_doctest = in_fence = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if in_doctest and not stripped:
            out.append("```")
            in_doctest = False
        if not in_fence and not in_doctest and stripped.startswith(">>>"):
            out.append("```pycon")
            in_doctest = True
        if not in_fence and not in_doctest:
            line = _LITERAL.sub(r"`\1`", _ROLE.sub(r"`\1`", line))
        out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class DoctestMarkdown(griffe.Extension):
    """Rewrite each docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
