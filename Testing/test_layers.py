"""The engine's layers never import upwards, and no modules import each other in a circle.

Each folder (or top-level module) of the engine has a rank; a module may import from a lower rank,
or from its own folder. Imports inside functions count too: a lazy import that climbs is still a
dependency that climbs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "PLCLSegmentation" / "PLCLSegmentationLib" / "engine"
PACKAGE = "PLCLSegmentationLib.engine"

#: Bottom to top: the contract, the settings and sinks, files, the method and the request, runs, the lab, the command.
RANK = {
    "protocol": 0, "errors": 0, "slicing": 0,
    "config": 1, "events": 1, "runtime": 1, "parent_pipe": 1,
    "files": 2,
    "method": 3, "evaluation": 3, "request": 3,
    "run": 4,
    "lab": 5, "cohort": 5,
    "cli": 6,
    "__main__": 7,
}


def module_name(path: Path, root: Path = ENGINE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def engine_imports(path: Path, root: Path = ENGINE) -> set[str]:
    """Engine modules ``path`` imports (relative to the engine), anywhere in the file."""
    own = module_name(path, root)
    package = own.split(".")[:-1] if path.name != "__init__.py" else own.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                if node.level - 1 > len(package):
                    continue  # above the engine (the package's __version__)
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith(PACKAGE + "."):
                target = node.module[len(PACKAGE) + 1:]
            else:
                continue
            for alias in node.names:  # `from . import slicing` names a module
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if (root / (sub.replace(".", "/") + ".py")).is_file() else target)
        elif isinstance(node, ast.Import):
            found |= {a.name[len(PACKAGE) + 1:] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return {name for name in found if name} - {own}


def modules() -> dict[str, set[str]]:
    return {module_name(p): engine_imports(p) for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts}


def rank(module: str) -> int:
    return RANK[module.split(".")[0]]


def test_every_engine_module_has_a_layer():
    assert {name.split(".")[0] for name in modules() if name} <= set(RANK)


def test_no_import_climbs_to_a_higher_layer():
    climbing = [f"{source} -> {target}" for source, targets in modules().items() if source
                for target in targets
                if source.split(".")[0] != target.split(".")[0] and rank(target) >= rank(source)]
    assert not climbing, climbing


def test_no_import_circle():
    graph = modules()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_the_check_sees_a_lazy_climbing_import(tmp_path):
    """The checker itself: a lazy import of the lab from the method layer is found, and climbs."""
    root = tmp_path / "engine"
    for name in ("method/train.py", "lab/bench.py", "slicing.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    lazy = "def f():\n    from ..lab.bench import run_bench\n    from .. import slicing\n"
    (root / "method" / "train.py").write_text(lazy)
    assert engine_imports(root / "method" / "train.py", root) == {"lab.bench", "slicing"}
    assert rank("lab.bench") > rank("method.train")
