"""The package layout is the pipeline's data flow: no import cycle among the project's modules
(function-level imports included, which is how cycles hid before), every module imports alone, and
imports point only down the layers of the README's layout table."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("blendgen", "trainer")

# What each part of the house may import besides itself, bottom up. blendgen.io (atomic writes,
# locks) and the blendgen package (its version) serve every layer; synth draws made-up datasets
# and needs only their class lists; the trainer reads shards (and build-clusters' output for the
# out-of-context suite); cli is the switchboard over all of them.
BOTTOM = ("blendgen", "blendgen.io")
MAY_IMPORT = {
    "blendgen": (),
    "blendgen.io": (),
    "blendgen.datasets": BOTTOM,
    "blendgen.shards": (*BOTTOM, "blendgen.datasets"),
    "blendgen.synth": (*BOTTOM, "blendgen.datasets"),
    "blendgen.generation": (*BOTTOM, "blendgen.datasets", "blendgen.shards"),
    "trainer": (*BOTTOM, "blendgen.datasets", "blendgen.shards", "blendgen.generation"),
    "cli": (*BOTTOM, "blendgen.datasets", "blendgen.shards", "blendgen.synth", "blendgen.generation", "trainer"),
    "__main__": ("cli",),  # ``python -m blendgen`` / ``python -m trainer``
}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for cli.py and every module of the packages."""
    modules = {"cli": ROOT / "cli.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its source, at module level or inside
    functions, relative imports resolved. ``from pkg import mod`` imports the module ``pkg.mod``;
    the parent packages Python initialises on the way are not counted (they import nothing)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None: a depth-first walk that meets a module
    still on its own path has gone round."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def walk(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start, [start])):
            return cycle
    return None


def part_of(name: str) -> str:
    if name.endswith(".__main__"):
        return "__main__"
    return max((p for p in MAY_IMPORT if name == p or name.startswith(p + ".")), key=len)


# -- the checks themselves, on small graphs ------------------------------------------------------
def test_find_cycle_finds_a_circle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_function_level_and_relative_imports_are_edges(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("from .b import thing\n\ndef late():\n    from ..c import other\n    import blendgen.io\n")
    modules = {"p.q.x": source, "p.q.b": source, "p.c": source, "blendgen.io": source}
    assert imports_of("p.q.x", source, modules) == {"p.q.b", "p.c", "blendgen.io"}


# -- the project ---------------------------------------------------------------------------------
def test_no_import_cycle_among_the_projects_modules():
    graph = import_graph()
    assert len(graph) > 50  # the walk saw the packages, not an empty folder
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_only_down_the_layers():
    wrong = sorted(f"{name} ({part_of(name)}) imports {target} ({part_of(target)})"
                   for name, targets in import_graph().items() for target in targets
                   if part_of(target) != part_of(name) and part_of(target) not in MAY_IMPORT[part_of(name)])
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_every_module_imports_alone():
    # One interpreter for all (torch is imported once); before each module every project module
    # is dropped from sys.modules, so each import starts from nothing of ours, as in a fresh
    # process. The __main__ modules run the command line when imported and are left out.
    names = [n for n in sorted(project_modules()) if not n.endswith("__main__")]
    code = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'cli' or m.split('.')[0] in ('blendgen', 'trainer')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", "modules that do not import alone:\n" + done.stdout
