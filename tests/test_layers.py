"""The layers README.md describes, held: each package of hub imports only those below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HUB = Path(__file__).resolve().parent.parent / "hub"
SHARED = {"config", "logs", "aio"}  # the top-level helpers any shell may use
ALLOWED = {
    "core": {"core"},
    "redis": {"core", "redis", *SHARED},
    "engine": {"core", "redis", "engine", *SHARED},
    "web": {"core", "redis", "engine", "web", *SHARED},
    "client": {"core", "client"},
}


def hub_imports(source: str) -> set[str]:
    """The first part under `hub.` of every hub module `source` imports (at run time or not)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "hub":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "hub" and len(parts) > 1:
                    found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    crossing = {
        str(path.relative_to(HUB)): sorted(hub_imports(path.read_text()) - ALLOWED[layer])
        for path in sorted((HUB / layer).rglob("*.py"))
    }
    assert {path: names for path, names in crossing.items() if names} == {}


def test_the_shared_modules_import_only_the_core() -> None:
    for name in sorted(SHARED):
        assert hub_imports((HUB / f"{name}.py").read_text()) <= {"core"}, name


def test_the_layer_test_sees_a_crossing() -> None:
    """The check itself: every way of importing the web side is named."""
    source = "from hub.web.state import STORE\nimport hub.web.app\nfrom hub import web, logs\n"
    assert hub_imports(source) == {"web", "logs"}
