"""The architecture, checked on the real imports (AST): folders import only downward, families are
reached only through their spec, and no module imports another's private names.

    core  <-  data  <-  families (the table, ModelSpec, shared helpers)  <-  serving
          <-  families/<name>/ (one family)  <-  lifecycle  <-  cli, dags

A family's folder may use everything generic below lifecycle; nothing outside it imports it (serving,
lifecycle, the CLI and the DAGs reach it through ``pipeline.families.get(name)``, its ``ModelSpec``),
and no family imports another. ``models/`` (the PyTorch modules) imports nothing of ``pipeline``.
Function-level and ``TYPE_CHECKING`` imports count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast

LAYERS = {
    "core": 0,
    "data": 1,
    "families": 2,
    "serving": 3,
    "family": 3.5,
    "lifecycle": 4,
    "cli": 5,
    "__main__": 5,
    "dags": 5,
}


def _imports(path: Path, repo: Path = REPO):
    """(line, module, names) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(repo).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names = [a.name for a in node.names]
            yield node.lineno, module, names
            for name in names:  # from pipeline.families import next_item: a module import
                yield node.lineno, f"{module}.{name}", []
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []


def _where(module: str, families: set[str]) -> tuple[str, str | None] | None:
    """(layer, family) of a module of ``pipeline``; None for anything else."""
    parts = module.split(".")
    if parts[0] != "pipeline" or len(parts) < 2:
        return None
    if parts[1] == "families" and len(parts) > 2 and parts[2] in families:
        return "family", parts[2]
    return (parts[1] if parts[1] in LAYERS else None), None


def layout_problems(repo: Path = REPO) -> list[str]:
    """Every import that breaks the layering (the test's assertion, callable on another checkout)."""
    families = {p.name for p in (repo / "pipeline" / "families").iterdir() if (p / "__init__.py").exists()}
    problems = []
    sources = [*sorted((repo / "pipeline").rglob("*.py")), *sorted((repo / "dags").rglob("*.py"))]
    for path in sources:
        rel = path.relative_to(repo)
        own = _where(".".join(rel.with_suffix("").parts), families) if rel.parts[0] == "pipeline" else ("dags", None)
        if own is None or own[0] is None:  # pipeline/__init__.py: no layer of its own
            continue
        own_layer, own_family = own
        reported = set()  # one problem per import line (``from a.b import c`` is also a.b.c)
        for line, module, names in _imports(path, repo):
            if line in reported:
                continue
            before = len(problems)
            target = _where(module, families)
            if target is None or target[0] is None:
                continue
            layer, family = target
            if family is not None and family != own_family:
                who = f"family {own_family}" if own_family else own_layer
                problems.append(
                    f"{rel}:{line} ({who}) imports {module}: reach a family through its "
                    "ModelSpec (pipeline.families.get)"
                )
            elif LAYERS[layer] > LAYERS[own_layer]:
                problems.append(f"{rel}:{line} ({own_layer}) imports {module} ({layer})")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and (layer, family) != (own_layer, own_family):
                problems.append(f"{rel}:{line} imports private {private} from {module}")
            if len(problems) > before:
                reported.add(line)
    for path in sorted((repo / "models").rglob("*.py")):
        problems += [
            f"models/{path.name}:{line} imports {module}"
            for line, module, _ in _imports(path, repo)
            if module.split(".")[0] == "pipeline"
        ]
    return sorted(set(problems))


def test_folders_import_only_downward_and_families_only_through_their_spec():
    assert layout_problems() == []


def test_the_layout_check_sees_lazy_relative_and_from_imports(tmp_path):
    """The check itself: a serving module importing a family lazily, by a relative import or as a
    name of ``pipeline.families``, and one family importing another, are all reported."""
    for folder in ("pipeline/serving", "pipeline/families/a", "pipeline/families/b", "models", "dags"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "pipeline/serving/x.py").write_text("def f():\n    from pipeline.families.a import spec\n")
    (tmp_path / "pipeline/serving/y.py").write_text("from ..families import b\n")
    (tmp_path / "pipeline/families/a/m.py").write_text(
        "from pipeline.families.b.m import thing\nfrom pipeline.serving.x import f\n"
    )
    (tmp_path / "pipeline/families/b/m.py").write_text("import pipeline.lifecycle.gate\n")
    found = layout_problems(tmp_path)
    assert any(p.startswith("pipeline/serving/x.py:2 (serving) imports pipeline.families.a") for p in found)
    assert any(p.startswith("pipeline/serving/y.py:1 (serving) imports pipeline.families.b") for p in found)
    assert any(p.startswith("pipeline/families/a/m.py:1 (family a) imports pipeline.families.b.m") for p in found)
    assert any(p.startswith("pipeline/families/b/m.py:1 (family) imports pipeline.lifecycle.gate") for p in found)
    assert not any("families/a/m.py:2" in p for p in found)  # a family may use generic serving code


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
    allowed = {"families/__init__.py"}
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        rel = str(path.relative_to(REPO / "pipeline"))
        if rel in allowed or rel.startswith(tuple(f"families/{n}/" for n in names)):
            continue
        text = path.read_text()
        found += [f"pipeline/{rel}: {n!r}" for n in names if f'"{n}"' in text or f"'{n}'" in text]
    assert found == []
