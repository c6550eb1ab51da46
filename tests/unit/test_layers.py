"""The layers: the core (service) never reaches up into the HTTP adapter, except through the composition root."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOT = "service/wiring.py"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports included)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


class TestLayers:
    """Who may import whom."""

    def test_only_the_composition_root_imports_the_http_adapter(self) -> None:
        """No core module imports http_ingress; the composition root is the one that wires them."""
        offenders = [
            str(path.relative_to(ROOT))
            for path in sorted((ROOT / "service").rglob("*.py"))
            if str(path.relative_to(ROOT)) != COMPOSITION_ROOT
            and any(module.split(".")[0] == "http_ingress" for module in imported_modules(path))
        ]
        assert offenders == []

    def test_nothing_imports_the_composition_root_but_the_entry_points(self) -> None:
        """The composition root sits above both packages: only the process model and the commands that run the
        ingress's parser outside the service (quarantine replay, reconcile --campaign) start it."""
        importers = [
            str(path.relative_to(ROOT))
            for package in ("service", "http_ingress")
            for path in sorted((ROOT / package).rglob("*.py"))
            if "service.wiring" in imported_modules(path)
        ]
        assert importers == ["service/process.py", "service/quarantine.py", "service/reconcile.py"]

    def test_no_engine_class_is_named_outside_the_store_package(self) -> None:
        """Engines are chosen by ``open_store``; nothing else names their modules."""
        offenders = [
            str(path.relative_to(ROOT))
            for package in ("service", "http_ingress")
            for path in sorted((ROOT / package).rglob("*.py"))
            if "store" not in path.relative_to(ROOT).parts
            and any(module in ("service.store.sqlite", "service.store.postgres") for module in imported_modules(path))
        ]
        assert offenders == []
