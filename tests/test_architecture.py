"""The house's floors: every import in src/, recipes/ and bench/ (read with `ast`: module-level, function-level and
TYPE_CHECKING imports alike) goes down a floor or stays on its own, and no module reaches itself through its imports.

`FLOORS` is the one place the floors are defined (docs/architecture.md draws them). A module belongs to the floor of
the longest name in it that is a prefix of the module's dotted name (`rlhf_recipes.stages` holds the whole package).
Inside a floor any import is allowed as long as it closes no circle.

    python tests/test_architecture.py      # prints every circle and every upward import
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "rlhf_recipes"

# Lowest first. Arrows only go down: a module imports its own floor or a lower one.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("rlhf_recipes.errors",)),  # UserError, did-you-mean, exit codes: imports nothing of the project
    (
        "ground",  # what every stage shares: the config loader and its help, folders, models, precision, scoring
        (
            "rlhf_recipes",  # the package's __init__
            "rlhf_recipes.cli",
            "rlhf_recipes.config",
            "rlhf_recipes.usage",
            "rlhf_recipes.fs",
            "rlhf_recipes.models",
            "rlhf_recipes.offline",
            "rlhf_recipes.precision",
            "rlhf_recipes.lineage",
            "rlhf_recipes.scoring",
            "rlhf_recipes.progress",
            "rlhf_recipes.demo",
            "rlhf_recipes.demo_world",
        ),
    ),
    ("stages", ("rlhf_recipes.stages",)),  # the registry by name, one parse and one runner of a stage's command
    (
        "work",  # what the stages do
        (
            "rlhf_recipes.data",
            "rlhf_recipes.train",
            "rlhf_recipes.evaluation",
            "rlhf_recipes.feedback",
            "rlhf_recipes.publish",
        ),
    ),
    ("pipeline", ("rlhf_recipes.pipeline",)),  # every stage in order: knows stages, not trainers
    ("tools", ("rlhf_recipes.plan", "rlhf_recipes.workspace")),  # the planner plans pipelines; init copies configs
    ("entry", ("rlhf_recipes.__main__", "recipes", "bench")),  # what people run; nothing imports them
]
ROOTS = {"src": REPO / "src", "recipes": REPO, "bench": REPO}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every Python file of src/rlhf_recipes, recipes/ and bench/."""
    found = {}
    for top in (REPO / "src" / PACKAGE, REPO / "recipes", REPO / "bench"):
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(top.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file, each as the most specific known module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
                break  # `from .x import y`: y if it is a module, else x
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def floor_of(name: str) -> int:
    best, level = -1, None
    for number, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            inside = name.startswith(prefix + ".") and prefix != PACKAGE  # the package's __init__ is itself only
            if (name == prefix or inside) and len(prefix) > best:
                best, level = len(prefix), number
    if level is None:
        raise AssertionError(f"{name} is on no floor: add it to FLOORS in tests/test_architecture.py")
    return level


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def upward(edges: dict[str, set[str]]) -> list[str]:
    """`a (floor) -> b (floor)` for every import of a higher floor's module."""
    names = [name for name, _ in FLOORS]
    return sorted(
        f"{a} ({names[floor_of(a)]}) -> {b} ({names[floor_of(b)]})"
        for a, targets in edges.items()
        for b in targets
        if floor_of(b) > floor_of(a)
    )


def report() -> str:
    edges = graph()
    found_cycles, found_upward = cycles(edges), upward(edges)
    lines = [f"{len(edges)} modules, {sum(map(len, edges.values()))} imports between them"]
    lines.append(f"{len(found_cycles)} import circle(s)")
    lines += [f"  circle: {' <-> '.join(c)}" for c in found_cycles]
    lines.append(f"{len(found_upward)} upward import(s)")
    lines += [f"  up: {line}" for line in found_upward]
    return "\n".join(lines)


def test_no_import_circle_and_no_upward_import():
    edges = graph()
    assert edges, "no module found"
    found_cycles, found_upward = cycles(edges), upward(edges)
    assert not found_cycles and not found_upward, "\n" + report()


def test_nothing_imports_a_recipe():
    edges = graph()
    importers = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if b.startswith("recipes"))
    assert not importers, importers


def experimental_importers(known: dict[str, Path]) -> dict[str, set[str]]:
    """trl.experimental.X -> the project modules that import it (anywhere in the file, as `imports` reads them)."""
    found: dict[str, set[str]] = {}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for module in names:
                if module.startswith("trl.experimental."):
                    found.setdefault(".".join(module.split(".")[:3]), set()).add(name)
    return found


def test_each_trl_experimental_module_is_imported_in_one_module_and_ppo_only_by_the_trl_1_12_bench():
    found = experimental_importers(modules())
    assert {module: names for module, names in found.items() if len(names) != 1} == {}
    assert found.get("trl.experimental.ppo") == {"bench.trl_ppo_example"}  # TRL 1.13 removed it; our PPO is ours
    assert found.get("trl.experimental.online_dpo") == {"rlhf_recipes.train.online_dpo"}


def test_the_checker_finds_a_circle_and_an_upward_import():
    edges = {"rlhf_recipes.config": {"rlhf_recipes.stages.run"}, "rlhf_recipes.stages.run": {"rlhf_recipes.config"}}
    assert cycles(edges) == [["rlhf_recipes.config", "rlhf_recipes.stages.run"]]
    assert upward(edges) == ["rlhf_recipes.config (ground) -> rlhf_recipes.stages.run (stages)"]


def listed_paths() -> list[str]:
    """The paths of docs/architecture.md's file list: the first word of every line of its last code block."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.rsplit("```", 2)[-2]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def test_docs_architecture_lists_every_module_and_only_paths_that_exist():
    listed = listed_paths()
    assert not [path for path in listed if not (REPO / path).exists()], "listed in docs/architecture.md, not there"
    modules = sorted(str(path.relative_to(REPO)) for path in (REPO / "src" / PACKAGE).rglob("*.py"))
    assert not [path for path in modules if path not in listed], "in src/, not in docs/architecture.md"


if __name__ == "__main__":
    print(report())
