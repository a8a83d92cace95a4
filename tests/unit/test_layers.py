"""The layers, read from the import graph: the kernel stands alone, components and projections
build on it, and only the assembly modules see everything.

Every import counts: at the top, inside functions, under TYPE_CHECKING, and
`importlib.import_module("...")` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The modules that wire everything together: they may import anything.
ASSEMBLY = frozenset({"streams.components", "streams.app", "streams.projector", "streams.cli",
                      "streams.client", "streams.demo", "streams.bench", "streams.campaigns"})


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kernel_modules() -> list[Path]:
    top = [p for p in sorted((ROOT / "streams").glob("*.py")) if module_name(p) not in ASSEMBLY]
    return top + sorted((ROOT / "schemas").rglob("*.py"))


def component_packages() -> list[str]:
    return sorted(f"streams.{p.name}" for p in (ROOT / "streams").iterdir()
                  if (p / "__init__.py").is_file() and f"streams.{p.name}" not in ASSEMBLY)


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import in the file of `module`; `from a import b`
    gives both a and a.b (b may be a submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            yield node.lineno, target
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            yield node.lineno, node.args[0].value


def within(module: str, packages: Collection[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def violations(paths: Iterable[Path], forbidden: Collection[str], *,
               name: Callable[[Path], str] = module_name) -> list[str]:
    """'module:line imports target' for every import of a forbidden package."""
    found = set()
    for path in paths:
        module = name(path)
        for line, target in imports(path, module):
            if within(target, forbidden):
                found.add(f"{module}:{line} imports {target}")
    return sorted(found)


def test_the_layers_are_found() -> None:
    kernel = {module_name(p) for p in kernel_modules()}
    assert {"streams.archive", "streams.sql", "streams.history", "schemas.codec"} <= kernel
    assert not kernel & ASSEMBLY
    assert {"streams.pool", "streams.dag", "streams.artifacts"} <= set(component_packages())


def test_the_kernel_imports_neither_projections_nor_components() -> None:
    assert violations(kernel_modules(), ["projections", *component_packages()]) == []


def test_projections_never_import_the_assembly_modules() -> None:
    assert violations(sorted((ROOT / "projections").rglob("*.py")), ASSEMBLY) == []


def component_modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


# Views a component owns besides projections/<name>.py, <name>_api.py and <name>_metrics.py.
OWN_VIEWS = {"streams.pool": ("projections.models",),
             "streams.artifacts": ("projections.search",)}


def own_views(package: str) -> tuple[str, ...]:
    name = package.removeprefix("streams.")
    return (f"projections.{name}", f"projections.{name}_api", f"projections.{name}_metrics",
            *OWN_VIEWS.get(package, ()))


def test_components_never_import_the_assembly_modules() -> None:
    """Components sit below the assembly: what a CLI command or a bench needs of the whole
    Pit is handed to it (a `PitFactory`), never imported - the import made a 10-module
    cycle through streams.client and streams.app."""
    found = [v for package in component_packages()
             for v in violations(component_modules(package), ASSEMBLY)]
    assert found == []


def test_components_import_only_their_own_views_of_the_projections() -> None:
    """Not another component's views, nor the projections' own assembly (the read API,
    replay, audit, the console, the projector runtime). `from projections import pool`
    names the (empty) package too; the view it names is checked."""
    found = []
    for package in component_packages():
        for path in component_modules(package):
            module = module_name(path)
            found += [f"{module}:{line} imports {target}"
                      for line, target in imports(path, module)
                      if within(target, ["projections"]) and target != "projections"
                      and not within(target, own_views(package))]
    assert found == []


def test_every_kind_of_import_is_seen(tmp_path: Path) -> None:
    """The checks are only as good as the reader: nested, guarded and relative imports count."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from projections.runtime import View\n"
        "def f():\n    import streams.pool.pool\n    from . import dag\n"
        "    importlib.import_module('projections.audit')\n")
    found = violations([probe], ["projections", *component_packages()],
                       name=lambda _: "streams.probe")
    assert found == ["streams.probe:3 imports projections.runtime",
                     "streams.probe:3 imports projections.runtime.View",
                     "streams.probe:5 imports streams.pool.pool",
                     "streams.probe:6 imports streams.dag",
                     "streams.probe:7 imports projections.audit"]
