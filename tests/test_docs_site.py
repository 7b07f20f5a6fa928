"""The docs site: every public name is in the API reference, with a runnable example.

The reference pages (docs/reference/) render docstrings with mkdocstrings (``::: path``
directives); CI builds the site with ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import telemagg

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
SUBMODULES = [
    "policy",
    "release",
    "ledger",
    "consent",
    "hygiene",
    "dask",
    "audit",
    "errors",
    "datasets",
    "testing",
    "otel",
    "collector",
    "report",
]
# Modules without __all__: their public names, chosen here.
WITHOUT_ALL = {"release": ["Accounting", "MetricReport", "Release"]}


def public_names() -> list[tuple[str, str, Any]]:
    """(module, name, object) for every public name of the package and its submodules."""
    names = [("telemagg", name, getattr(telemagg, name)) for name in telemagg.__all__]
    for sub in SUBMODULES:
        module = importlib.import_module(f"telemagg.{sub}")
        exported = getattr(module, "__all__", None) or WITHOUT_ALL[sub]
        names += [(module.__name__, name, getattr(module, name)) for name in exported]
    return names


def documented() -> set[str]:
    """Every path rendered by a ``::: path`` directive on the reference pages."""
    paths: set[str] = set()
    for page in REFERENCE.glob("*.md"):
        paths |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.M))
    return paths


def reference_path(module: str, name: str, obj: Any) -> str:
    """The path a name is documented under: a re-export of a top-level name is documented once."""
    if module != "telemagg" and name in telemagg.__all__ and getattr(telemagg, name) is obj:
        return f"telemagg.{name}"
    return f"{module}.{name}"


def test_submodules_exist() -> None:
    for sub in SUBMODULES:
        assert (REFERENCE / f"{sub}.md").exists(), f"docs/reference/{sub}.md is missing"


@pytest.mark.parametrize(
    ("module", "name", "obj"), public_names(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_name_is_in_the_reference(module: str, name: str, obj: Any) -> None:
    path = reference_path(module, name, obj)
    page = "index" if path.count(".") == 1 else module.split(".")[1]
    assert path in documented(), (
        f"{path} is public but no reference page renders it: add '::: {path}' on its own line"
        f" to docs/reference/{page}.md"
    )


@pytest.mark.parametrize(
    ("module", "name", "obj"), public_names(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_name_has_an_example(module: str, name: str, obj: Any) -> None:
    doc = inspect.getdoc(obj) or ""
    if isinstance(obj, type) and obj.__doc__ is None:
        doc = ""  # a class without its own docstring inherits one: that is not an example
    assert ">>>" in doc or "```" in doc, f"{module}.{name}'s docstring has no example"


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s+([\w/.-]+\.md)\s*$", config, flags=re.M))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == listed, f"not in the nav: {pages - listed}; missing: {listed - pages}"


@pytest.mark.skipif(
    shutil.which("mkdocs") is None and not (Path(sys.prefix) / "bin" / "mkdocs").exists(),
    reason="mkdocs not installed (pip install -e '.[docs]')",
)
def test_site_builds_strict(tmp_path: Path) -> None:
    mkdocs = Path(sys.prefix) / "bin" / "mkdocs"
    command = [str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "-q"]
    result = subprocess.run(
        [*command, "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
