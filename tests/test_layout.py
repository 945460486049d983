"""The design's structural rules, checked from the code itself: platform/ is no package, one
folder per concern with dependencies one way and no import circles, the core imports no Ray."""

import ast
import subprocess
import sys

from .conftest import REPO

PACKAGE = REPO / "platform" / "raygpt"

# Each concern's layer: a module may import its own layer and the ones below, never above.
# The top-level modules (errors, config, storage, tokenizer, cli, ...) are the base, 0.
LAYERS = {
    "model": 1,
    "data": 1,
    "checkpoint": 2,
    "inference": 3,
    "train": 3,
    "release": 4,
    "tune": 5,
}
# The Ray layers: thin wrappers around the core, found by their folder and name.
RAY_LAYERS = {
    "raygpt.ray_runtime",
    "raygpt.data.prepare",
    "raygpt.data.stream",
    "raygpt.train.launch",
    "raygpt.train.loop",
    "raygpt.train.metrics",
    "raygpt.release.code_eval",
}
MAX_TOP_LEVEL_MODULES = 10


def module_name(path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules this one imports, at any depth (lazy imports count too).
    `from raygpt.checkpoint import native` imports the module native; `from raygpt.checkpoint
    import load_model` imports the package's face, raygpt.checkpoint."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return {target for target in found if target in known and target != name}


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, tree, set(modules)) for name, tree in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_platform_is_a_plain_folder():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_no_import_circle_anywhere_in_the_package():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in import_graph().items()
        for target in sorted(targets)
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_the_package_top_level_holds_few_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    assert "training.py" not in top
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert set(LAYERS) <= folders


def test_the_core_runs_without_ray():
    core = sorted(
        name
        for name in package_modules()
        if name not in RAY_LAYERS and not name.startswith("raygpt.tune")
    )
    assert "raygpt.model.gpt" in core and "raygpt.inference.engine" in core
    code = "import sys\n" + "".join(f"import {m}\n" for m in core)
    code += "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
