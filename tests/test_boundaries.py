"""The import boundaries between the project's packages, read from the source (ast, nothing imported).

* serving/ and training/ import from ``mlops`` only its kernel (config, registry, model_io, errors,
  env, util, rollout), and the kernel imports nothing else of ``mlops``, so neither part pulls in backup and
  restore, the local stack or the CLI;
* nothing outside tests/ imports ``tests``; nothing imports ``scripts`` (tests run scripts as
  subprocesses, as operators do);
* a test module never imports another test module's private (``_``) names: what tests share lives
  in tests/helpers.py, tests/archives.py, registry data modules or fixtures.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

KERNEL = {"mlops.config", "mlops.registry", "mlops.model_io", "mlops.errors", "mlops.env", "mlops.util",
          "mlops.rollout"}
PACKAGES = ("mlops", "serving", "training", "scripts", "tests")


def sources(*folders: str) -> list[Path]:
    """Every .py file under ``folders`` (scripts/ also has extension-less Python entry points)."""
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix == ".py" or (path.is_file() and not path.suffix and is_python_script(path)):
                found.append(path)
    return found


def is_python_script(path: Path) -> bool:
    """True for an extension-less file whose #! line names python."""
    first = path.read_bytes()[:64]
    return first.startswith(b"#!") and b"python" in first.split(b"\n")[0]


def module_name(path: Path) -> str:
    """Dotted module name of a file under ROOT (``mlops/stack/process.py`` -> ``mlops.stack.process``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, imported name or None) for every import in the file, also inside functions.

    ``from a import b`` gives ``(line, "a", "b")``; relative imports are resolved against the file.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                yield node.lineno, module, alias.name


def targets(module: str, name: str | None) -> set[str]:
    """The modules an import may load: ``module`` and, for ``from module import name``, ``module.name``."""
    return {module} | ({f"{module}.{name}"} if name and name != "*" else set())


def where(path: Path, line: int) -> str:
    """``file:line`` relative to the checkout."""
    return f"{path.relative_to(ROOT)}:{line}"


def is_within(module: str, package: str) -> bool:
    """True if ``module`` is ``package`` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def test_the_walk_sees_every_package():
    for package in PACKAGES:
        assert sources(package), f"no Python files found under {package}/"
    assert ROOT / "scripts" / "dr_drill" in sources("scripts")


@pytest.mark.parametrize("part", ["serving", "training"])
def test_serving_and_training_import_only_the_mlops_kernel(part):
    bad = []
    for path in sources(part):
        for line, module, name in imports(path):
            if not is_within(module, "mlops"):
                continue
            if module == "mlops":  # from mlops import config, registry
                loaded = {f"mlops.{name}"} if name else {"mlops"}
            else:
                loaded = {module}
            bad += [f"{where(path, line)} imports {m}" for m in sorted(loaded - KERNEL)]
    assert not bad, (f"{part}/ may import only the kernel of mlops ({', '.join(sorted(KERNEL))}):\n"
                     + "\n".join(bad))


def test_the_kernel_imports_nothing_else_of_mlops():
    bad = []
    for module in sorted(KERNEL):
        path = ROOT / (module.replace(".", "/") + ".py")
        for line, imported, name in imports(path):
            if not is_within(imported, "mlops"):
                if is_within(imported, "serving") or is_within(imported, "training"):
                    bad.append(f"{where(path, line)} imports {imported}")
                continue
            loaded = {f"mlops.{name}"} if imported == "mlops" and name else {imported}
            bad += [f"{where(path, line)} imports {m}" for m in sorted(loaded - KERNEL)]
    assert not bad, ("the kernel (what serving and training import) must not pull in the rest of mlops, "
                     "serving or training:\n" + "\n".join(bad))


def test_nothing_outside_tests_imports_tests():
    bad = [f"{where(path, line)} imports {module}{'.' + name if name and module == 'tests' else ''}"
           for path in sources("mlops", "serving", "training", "scripts")
           for line, module, name in imports(path)
           if is_within(module, "tests")]
    assert not bad, "product code and scripts must not import tests/ (move the helper into mlops):\n" + "\n".join(bad)


def test_nothing_imports_scripts():
    bad = [f"{where(path, line)} imports {module}{'.' + name if name and module == 'scripts' else ''}"
           for path in sources(*PACKAGES)
           for line, module, name in imports(path)
           if is_within(module, "scripts")]
    assert not bad, ("nothing imports scripts/ (put shared code in mlops, run a script as a subprocess):\n"
                     + "\n".join(bad))


def test_tests_do_not_import_private_names_of_other_test_modules():
    test_modules = {module_name(p) for p in sources("tests")}
    bad = []
    for path in sources("tests"):
        for line, module, name in imports(path):
            if not is_within(module, "tests"):
                continue
            for target in targets(module, name):
                if target.rsplit(".", 1)[-1].startswith("_") and (target in test_modules or module in test_modules):
                    bad.append(f"{where(path, line)} imports {target}")
    assert not bad, ("a test module imports another one's private name (share it through tests/helpers.py, "
                     "a support module or a fixture):\n" + "\n".join(bad))
