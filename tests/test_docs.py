"""The Python examples in the README and on every docs page run as written.

A block preceded by ``<!-- pending: FEATURE -->`` documents a feature that is still being
built; it is skipped until the marker is removed (``grep -rn "pending:" docs`` lists them;
``test_pending_blocks_compile`` checks that they are valid Python already).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- pending: ([\w.-]+) -->\s*\n)?```python\n(.*?)```", flags=re.S)
PAGES = [
    page
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    if "```python" in page.read_text()
]


def python_blocks(page: Path) -> str:
    """The page's runnable Python blocks, in order (pending ones left out)."""
    return "\n".join(code for marker, _, code in BLOCK.findall(page.read_text()) if not marker)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # examples may create ledger files
    code = python_blocks(page)
    exec(compile(code, str(page), "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pending_blocks_compile(page: Path) -> None:
    """Pending blocks do not run yet, but they are valid Python already."""
    for marker, feature, code in BLOCK.findall(page.read_text()):
        if marker:
            compile(code, f"{page} (pending: {feature})", "exec")


@pytest.mark.slow  # draws every figure: about 10 CPU seconds
def test_figures_script_runs(tmp_path: Path) -> None:
    """The figures on the metric pages are made by docs/figures/make_figures.py."""
    pytest.importorskip("matplotlib")
    import runpy

    script = DOCS / "figures" / "make_figures.py"
    namespace = runpy.run_path(str(script), run_name="__figures__")
    made = namespace["make_all"](tmp_path)
    assert made, "no figure made"
    for path in made:
        assert path.stat().st_size > 5_000, path  # a real picture, not an empty canvas
        assert (DOCS / "figures" / path.name).exists(), f"{path.name} is not committed in docs/"
