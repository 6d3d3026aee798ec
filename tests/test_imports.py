"""The import graph of tinyldm and the top-level scripts has no cycle.

Every import statement counts, also one inside a function: a lazy import hides a circle from Python's start-up, not
from a reader, who still has to hold both files in mind to follow either. The graph is read with `ast` (nothing is
imported): an edge runs from a module to each tinyldm module or script it names. `from package import submodule`
names the submodule; `from package import name` names the package (its __init__.py). Parent packages that Python
initialises on the way (tinyldm/__init__.py for every tinyldm.x) are not edges: a package re-exporting its own
modules is no circle.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train_vae.py", "train_ldm.py", "sample.py", "evaluate.py", "demo.py")


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the tinyldm package and the top-level scripts."""
    files = {script.removesuffix(".py"): ROOT / script for script in SCRIPTS}
    for path in sorted((ROOT / "tinyldm").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The known modules that one import statement of `module` names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    base = node.module or ""
    if node.level:  # relative: level 1 is the current package, each further dot one package up
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    out = []
    for alias in node.names:
        if f"{base}.{alias.name}" in known:  # from package import submodule
            out.append(f"{base}.{alias.name}")
        elif base in known:  # from module import name
            out.append(base)
    return out


def import_graph() -> dict[str, dict[str, str]]:
    """module → {module it imports: where ("file:line")}, counting imports anywhere in the file."""
    files = module_files()
    known, graph = set(files), {}
    for module, path in files.items():
        edges = graph[module] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(node, module, path.name == "__init__.py", known):
                    if target != module:
                        edges.setdefault(target, f"{path.relative_to(ROOT)}:{node.lineno}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle [a, b, …, a] of the graph, or None: depth-first search, a module met again while still on the path
    closes a cycle."""
    on_path, done = [], set()

    def visit(module):
        on_path.append(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return on_path[on_path.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        on_path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    return "\n".join(f"  {a} → {b}  ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "tinyldm.loading" in graph["tinyldm.interop.export"]  # absolute, at module level
    assert "tinyldm.diffusion.dpm_solver" in graph["tinyldm.diffusion"]  # relative, from a package's __init__
    assert "tinyldm.interop.diffusers_names" in graph["tinyldm.interop.pretrained"]  # from package import submodule
    assert "tinyldm.data.activities" in graph["tinyldm.data.datasets"]  # the same, inside a function
    assert "tinyldm.loading" in graph["tinyldm.evaluation.runs"]  # inside a function
    assert {"train_ldm", "sample", "demo"} <= set(graph)


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (break it by moving what both sides need out of one of them):\n" + \
        describe(cycle, graph)


def test_find_cycle_finds_a_lazy_one():
    graph = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:3"}, "c": {"a": "c.py:40"}, "d": {"a": "d.py:1"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ""}, "b": {}}) is None
