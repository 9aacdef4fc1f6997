"""Static checks of the project's import graph: no import circles, models below methods/protocol/runs, no private
names taken from other modules.

Pure `ast` analysis of the source files, nothing of the project is imported: the checks take well under a second and
still work while an import circle breaks `import adapt...`. Every import statement in a file counts, also those inside
functions, classes, `if` and `try` blocks: a deferred import hides a circle, it does not remove it.
"""
import ast
import collections
import dataclasses
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("adapt", "experiments")


@dataclasses.dataclass(frozen=True)
class Module:
    """One source file: `path` (relative to the root, for messages) and its parsed `tree`."""
    name: str
    path: str
    tree: ast.Module
    is_package: bool


@dataclasses.dataclass(frozen=True)
class Import:
    """An import of project module `target` by module `source`. For `from base import name`, `target` is `base.name`
    where that is a module (a submodule import), else `base`; `base` and `name` are None for `import target`."""
    source: str
    target: str
    path: str
    line: int
    base: Optional[str] = None
    name: Optional[str] = None

    def __str__(self):
        stmt = f"import {self.target}" if self.name is None else f"from {self.base} import {self.name}"
        return f"{self.path}:{self.line}: {stmt}"


def load_modules(root, packages):
    """Every .py file under `root`/<package> for the given top-level packages, parsed, by module name."""
    modules = {}
    for package in packages:
        for file in sorted((Path(root) / package).rglob("*.py")):
            rel = file.relative_to(root)
            parts = rel.with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            tree = ast.parse(file.read_text(encoding="utf-8"), str(rel))
            modules[name] = Module(name, rel.as_posix(), tree, is_package)
    return modules


def _from_base(module, node):
    """The absolute module name that `from <node.module> import ...` in `module` names (relative ones resolved)."""
    if not node.level:
        return node.module
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if node.level - 1 >= len(package):
        return None
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports_and_bindings(module, modules):
    """(the project imports of `module`, {local name: dotted module names an import binds it to})."""
    imports, bindings = [], collections.defaultdict(set)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    imports.append(Import(module.name, alias.name, module.path, node.lineno))
                if alias.asname:
                    bindings[alias.asname].add(alias.name)
                else:  # `import a.b.c` binds `a`
                    top = alias.name.partition(".")[0]
                    bindings[top].add(top)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    imports.append(Import(module.name, sub, module.path, node.lineno, base, alias.name))
                    bindings[alias.asname or alias.name].add(sub)
                elif base in modules:
                    imports.append(Import(module.name, base, module.path, node.lineno, base, alias.name))
    return imports, bindings


def find_imports(modules):
    """Every import of a project module by a project module. `import a.b.c` also runs a/__init__ and a/b/__init__,
    but that gives no edge to them: those would make trivial circles through every __init__ that re-exports."""
    found = [imp for module in modules.values() for imp in _imports_and_bindings(module, modules)[0]]
    return sorted(found, key=lambda imp: (imp.path, imp.line))


def _other_bindings(tree):
    """Names a file binds other than by import: an alias shadowed somewhere is not reliably a module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(imports):
    """Imports that take a private name (`from adapt.anchors import _level_boxes`) from another module."""
    return [imp for imp in imports if imp.name and _is_private(imp.name) and imp.target != imp.source]


def private_attributes(modules):
    """Private names read off an imported project module, as `ssd._feature_sizes` after
    `from adapt.models import ssd`: 'path:line: expression (private name of module)' for each."""
    found = []
    for module in modules.values():
        bindings = _imports_and_bindings(module, modules)[1]
        shadowed = _other_bindings(module.tree)
        for node in ast.walk(module.tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if not isinstance(value, ast.Name) or value.id in shadowed:
                continue
            for bound in sorted(bindings.get(value.id, ())):
                owner = ".".join([bound] + chain)
                if owner in modules and owner != module.name:
                    expr = ".".join([value.id] + chain + [node.attr])
                    found.append((module.path, node.lineno, node.col_offset, f"{expr} (private name of {owner})"))
    return [f"{path}:{line}: {text}" for path, line, _, text in sorted(found)]


def layer_violations(imports, lower, upper):
    """Imports by modules in package `lower` of modules in any of the packages `upper` (or of their submodules)."""
    def within(name, package):
        return name == package or name.startswith(package + ".")
    return [imp for imp in imports if within(imp.source, lower) and any(within(imp.target, p) for p in upper)]


def _strong_components(graph):
    """Tarjan's strongly connected components of {node: set of successors}."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while node not in component:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _shortest_cycle(graph, start, component):
    """A shortest cycle from `start` back to it inside `component`, as the list of its modules."""
    parent, queue = {start: None}, collections.deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node] & component):
            if succ == start:
                path = [node]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if succ not in parent:
                parent[succ] = node
                queue.append(succ)
    raise AssertionError(f"{start} is in no cycle of its component")


def circles(imports):
    """The import circles: self-imports, and for each strongly connected component of more than one module, a shortest
    circle through each of its modules (so each module of a component is shown, in circles short enough to read).
    Each circle is a tuple of modules that starts and ends with its (alphabetically) first module."""
    graph = collections.defaultdict(set)
    for imp in imports:
        graph[imp.source].add(imp.target)
    found = {(node, node) for node in graph if node in graph[node]}
    for component in _strong_components(graph):
        for start in component if len(component) > 1 else ():
            cycle = _shortest_cycle(graph, start, component)[:-1]
            first = cycle.index(min(cycle))
            found.add(tuple(cycle[first:] + cycle[:first + 1]))
    return sorted(found, key=lambda c: (len(c), c))


def _describe_circle(circle, imports):
    """'a -> b -> a  [a.py:3, b.py:7]': the circle, then where each of its imports is."""
    where = {}
    for imp in sorted(imports, key=lambda i: (i.path, i.line)):
        where.setdefault((imp.source, imp.target), f"{imp.path}:{imp.line}")
    return " -> ".join(circle) + "  [" + ", ".join(where[edge] for edge in zip(circle, circle[1:])) + "]"


def _failure(title, items):
    return f"{title} ({len(items)}):\n" + "\n".join(f"  {item}" for item in items)


@pytest.fixture(scope="module")
def project():
    """The real tree's modules and imports, parsed once for the three checks."""
    modules = load_modules(ROOT, PACKAGES)
    return modules, find_imports(modules)


def test_no_import_circles(project):
    _, imports = project
    found = circles(imports)
    assert not found, _failure("import circles", [_describe_circle(c, imports) for c in found])


def test_models_do_not_import_methods_protocol_or_runs(project):
    _, imports = project
    found = layer_violations(imports, "adapt.models", ("adapt.methods", "adapt.protocol", "adapt.runs"))
    assert not found, _failure("adapt.models imports of adapt.methods / adapt.protocol / adapt.runs", found)


def test_no_private_names_from_other_modules(project):
    modules, imports = project
    found = [str(imp) for imp in private_imports(imports)] + private_attributes(modules)
    assert not found, _failure("private names used from other modules", found)


def test_walker_finds_circle_layer_violation_and_private_names(tmp_path):
    """The checks above pass vacuously if the walker misses imports: run it on a small package with known faults."""
    files = {
        # Re-exports from pkg.a: that gives no circle through __init__ with pkg.a -> pkg.b.
        "pkg/__init__.py": "from .a import f\nVERSION = 1\n",
        "pkg/a.py": "import os\n\n\ndef f():\n    import pkg.b\n    return pkg.b, os\n\n\ndef _helper():\n    pass\n",
        "pkg/b.py": "from . import a\n",
        "pkg/runs.py": "def go():\n    pass\n",
        "pkg/models/__init__.py": "",
        "pkg/models/m.py": ("from pkg import b\nfrom pkg.runs import go as _go\nfrom ..a import f, _helper\n"
                            "if b:\n    from pkg import VERSION\nb._secret(b.__name__, VERSION)\n"),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = load_modules(tmp_path, ["pkg"])
    imports = find_imports(modules)

    assert {(i.source, i.target) for i in imports} == {
        ("pkg", "pkg.a"), ("pkg.a", "pkg.b"), ("pkg.b", "pkg.a"),
        ("pkg.models.m", "pkg.b"), ("pkg.models.m", "pkg.runs"), ("pkg.models.m", "pkg.a"), ("pkg.models.m", "pkg")}
    assert circles(imports) == [("pkg.a", "pkg.b", "pkg.a")]
    assert _describe_circle(("pkg.a", "pkg.b", "pkg.a"), imports) == "pkg.a -> pkg.b -> pkg.a  [pkg/a.py:5, pkg/b.py:1]"
    assert [str(i) for i in layer_violations(imports, "pkg.models", ("pkg.methods", "pkg.runs"))] == [
        "pkg/models/m.py:2: from pkg.runs import go"]
    assert [str(i) for i in private_imports(imports)] == ["pkg/models/m.py:3: from pkg.a import _helper"]
    assert private_attributes(modules) == ["pkg/models/m.py:6: b._secret (private name of pkg.b)"]
