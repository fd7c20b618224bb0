"""The layout shows the design: in pvepatch and pvelab imports point one way, down the layers,
and there is no import circle (lazy and TYPE_CHECKING imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "lib"
PVELAB = LIB / "pvelab"
PVEPATCH = LIB / "pvepatch"
# Each part may import only the parts listed (and itself); shared top-level modules are free.
ALLOWED = {
    "pvelab.pve": {"pvelab.pve"},
    "pvelab.image": {"pvelab.image"},
    "pvelab.fleet": {"pvelab.fleet", "pvelab.pve", "pvelab.image"},
}


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (at any depth of its code, lazy ones too)."""
    paths = {module_name(p, package_dir): p for p in package_dir.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def part_of(module: str) -> str | None:
    return next((p for p in ALLOWED if module == p or module.startswith(p + ".")), None)


def test_pvelab_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph(PVELAB))
    assert cycle is None, "import circle in pvelab: " + " -> ".join(cycle or [])


def test_pvelab_parts_import_one_way() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph(PVELAB).items()
        for target in targets
        if (part := part_of(module)) and (other := part_of(target)) and other not in ALLOWED[part]
    ]
    assert wrong == []


def test_pvelab_top_level_shows_the_parts_of_the_lab() -> None:
    packages = {p.name for p in PVELAB.iterdir() if (p / "__init__.py").is_file()}
    assert packages == {"pve", "image", "fleet"}


@pytest.mark.parametrize("lazy", [False, True])
def test_find_cycle_sees_a_circle_even_through_a_lazy_import(tmp_path: Path, lazy: bool) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    body = "def f():\n    from pkg.a import x\n" if lazy else "from pkg.a import x\n"
    (pkg / "b.py").write_text(body)
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_find_cycle_accepts_a_one_way_tree(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\nfrom . import c\n")
    (pkg / "b.py").write_text("from pkg.c import x\n")
    (pkg / "c.py").write_text("import os\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg", "pkg.b", "pkg.c"} and find_cycle(graph) is None


# pvepatch's layers, top to bottom: each may import itself and the layers below it.
LAYERS = ["plugin", "audit", "cycle", "guest", "proxmox", "transport", "inventory", "errors"]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_pvepatch_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph(PVEPATCH))
    assert cycle is None, "import circle in pvepatch: " + " -> ".join(cycle or [])


def test_pvepatch_imports_point_down_the_layers() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in import_graph(PVEPATCH).items()
        for target in targets
        if (low := layer_of(module)) is not None
        and (high := layer_of(target)) is not None
        and high < low
    ]
    assert upward == []


def test_pvepatch_top_level_shows_the_layers() -> None:
    packages = {p.name for p in PVEPATCH.iterdir() if (p / "__init__.py").is_file()}
    assert packages >= {"plugin", "transport", "proxmox", "guest", "cycle", "audit"}


def test_paramiko_is_imported_in_one_module_only() -> None:
    importers = sorted(
        str(path.relative_to(LIB))
        for path in PVEPATCH.rglob("*.py")
        if any(
            isinstance(node, (ast.Import, ast.ImportFrom))
            and any(
                (getattr(node, "module", None) or alias.name).split(".")[0] == "paramiko"
                for alias in node.names
            )
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert importers == ["pvepatch/transport/ssh.py"]


def test_no_private_pytest_import_in_lib() -> None:
    private = [
        str(path.relative_to(LIB))
        for path in LIB.rglob("*.py")
        if "_pytest" in import_graph_names(path)
    ]
    assert private == []


def import_graph_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names
