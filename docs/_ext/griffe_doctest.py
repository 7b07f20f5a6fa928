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
_LITERAL = re.compile(r"``(.+?)``", flags=re.S)  # may span lines
_FLAGS = re.compile(r"\s*# doctest:.*$")


def _prose(lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    return _LITERAL.sub(r"`\1`", _ROLE.sub(r"`\1`", text)).split("\n") if lines else []


def markdown(text: str) -> str:
    """Doctest runs fenced as ``pycon``; reST roles and literals as Markdown code spans."""
    out: list[str] = []
    prose: list[str] = []
    in_doctest = in_fence = False
    for line in text.splitlines():
        stripped = line.strip()
        if in_doctest and not stripped:
            out.append("```")
            in_doctest = False
        elif not in_fence and not in_doctest and stripped.startswith(">>>"):
            out += [*_prose(prose), "```pycon"]
            prose = []
            in_doctest = True
        elif stripped.startswith("```") and not in_doctest:
            out += _prose(prose)
            prose = []
            in_fence = not in_fence
            out.append(line)
            continue
        if in_doctest:
            out.append(_FLAGS.sub("", line))
        elif in_fence:
            out.append(line)
        else:
            prose.append(line)
    out += _prose(prose)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class DoctestMarkdown(griffe.Extension):
    """Rewrite each docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
