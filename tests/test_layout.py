"""The architecture, checked: folders import only downward, and no module imports another's private names.

    core  <-  data  <-  families  <-  serving  <-  lifecycle  <-  cli, dags

``models/`` (the PyTorch modules) imports nothing of ``pipeline``. Function-level imports count too:
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast

LAYERS = {"core": 0, "data": 1, "families": 2, "serving": 3, "lifecycle": 4, "cli": 5, "__main__": 5}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def test_folders_import_only_downward_and_never_private_names():
    problems = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        rel = path.relative_to(REPO / "pipeline")
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for line, module, names in _imports(path):
            target = _layer(module)
            if module == "pipeline" and names:          # from pipeline import families
                target = names[0]
            if target is None or target not in LAYERS:
                continue
            if LAYERS[target] > LAYERS[own]:
                problems.append(f"pipeline/{rel}:{line} ({own}) imports {module} ({target})")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != own:
                problems.append(f"pipeline/{rel}:{line} imports private {private} from {module}")
    for path in sorted((REPO / "models").rglob("*.py")):
        problems += [f"models/{path.name}:{line} imports {module}" for line, module, _ in _imports(path)
                     if module.split(".")[0] == "pipeline"]
    assert problems == []


def test_every_family_in_the_table_has_a_complete_spec():
    from pipeline import families

    for name in families.FAMILIES:
        spec = families.get(name)
        assert spec.name == name
        module, _, cls = spec.service.partition(":")
        assert (REPO / (module.replace(".", "/") + ".py")).exists() and cls


def test_no_module_outside_a_family_names_a_family():
    """Adding a family is one folder plus one row: nothing else switches on a family's name."""
    names = ("next_item", "purchase_propensity")
    allowed = {"families/__init__.py", "serving/next_item.py", "serving/propensity.py"}
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        rel = str(path.relative_to(REPO / "pipeline"))
        if rel in allowed or rel.startswith(tuple(f"families/{n}/" for n in names)):
            continue
        text = path.read_text()
        found += [f"pipeline/{rel}: {n!r}" for n in names if f'"{n}"' in text or f"'{n}'" in text]
    assert found == []
