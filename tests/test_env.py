"""mlops/env.py is the one registry of the operator side's environment: the docs list every
variable it declares, and no module under mlops/ reads the environment anywhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mlops import env

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \|")
# What may be done to os.environ outside env.py: setting and removing (for MLflow in this
# process, or a child process), never reading.
WRITES = {"pop", "setdefault", "update", "__setitem__", "__delitem__"}


def test_docs_table_lists_every_declared_variable():
    documented = {m.group(1) for line in DOC.read_text().splitlines() if (m := ROW.match(line))}
    missing = sorted(set(env.VARIABLES) - documented)
    assert not missing, f"docs/operations.md does not list {missing}"


def test_docs_table_matches_the_declarations():
    assert env.markdown_table() in DOC.read_text(), "regenerate the table: python -c 'from mlops import env; print(env.markdown_table())'"


def _reads(tree: ast.AST) -> list[int]:
    """Lines that read the environment: os.getenv, os.environ[...] loads, os.environ.get/items/..."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr == "getenv":
                lines.append(node.lineno)
            elif node.attr == "environ":
                up = parents.get(node)
                if isinstance(up, ast.Subscript) and isinstance(up.ctx, (ast.Store, ast.Del)):
                    continue
                if isinstance(up, ast.Attribute) and up.attr in WRITES:
                    continue
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "mlops").rglob("*.py") if p.name != "env.py"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_reads_the_environment_outside_env(path):
    found = _reads(ast.parse(path.read_text()))
    assert not found, f"{path.relative_to(ROOT)} reads os.environ on line(s) {found}: declare it in mlops/env.py"


def test_a_malformed_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("MLOPS_RESTORE_WORKERS", "many")
    with pytest.raises(env.EnvError, match="MLOPS_RESTORE_WORKERS must be a whole number, not 'many'"):
        env.MLOPS_RESTORE_WORKERS.get()
    monkeypatch.setenv("MLOPS_RESTORE_WORKERS", "  ")
    assert env.MLOPS_RESTORE_WORKERS.get() == 8
