"""Imports run one way: each package imports only the layers below it, and no packages form a cycle.

Layers, bottom to top:

    foundation   krmini (the root __init__), krmini.errors, krmini.argtypes, krmini.config, krmini.device,
                 krmini.hardware, krmini.runs
    data, tokenizer  (data may import tokenizer; tokenizer never imports data)
    model
    train
    infer
    chat, serve, eval, export, bench  (the application layer; no cycles among them)
    apps         (krmini.apps.*: programs built on all of the above, e.g. the memo assistant)
    krmini.cli, krmini.demo, krmini.doctor, krmini.__main__  (the top: may import anything)

`lab` (the from-scratch teaching code) imports only foundation modules.

Every `import` statement counts (module level, inside a function, under `if TYPE_CHECKING:`), as does
`importlib.import_module` with a literal name. The test reads the source with `ast`; it imports nothing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "krmini"

FOUNDATION = {"krmini", "krmini.errors", "krmini.argtypes", "krmini.config", "krmini.device", "krmini.hardware", "krmini.runs"}
TOP = {"krmini.cli", "krmini.demo", "krmini.doctor", "krmini.__main__"}
RANK = {"tokenizer": 1, "data": 1, "model": 2, "train": 3, "infer": 4}
RANK.update(dict.fromkeys(["chat", "serve", "eval", "export", "bench"], 5))
RANK["apps"] = 6
TOP_RANK = 7


@dataclass(frozen=True)
class Edge:
    file: str
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.importer} → {self.imported}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import of a krmini module in `path`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from krmini.x import y` may import the submodule krmini.x.y; count the deepest that exists.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else target))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [(line, mod) for line, mod in found if mod == "krmini" or mod.startswith("krmini.")]


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def package_of(module: str) -> str:
    """The unit the layers talk about: a foundation or top module itself, else `krmini.<package>`."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FOUNDATION and (n == len(parts) or prefix != "krmini"):
            return prefix
        if prefix in TOP:
            return prefix
    return ".".join(parts[:2])


def rank(unit: str) -> int:
    if unit in FOUNDATION:
        return 0
    if unit in TOP:
        return TOP_RANK
    short = unit.removeprefix("krmini.")
    if short == "lab":
        return 1
    if short not in RANK:
        raise AssertionError(f"{unit}: not in any layer; add it to the layers in {Path(__file__).name}")
    return RANK[short]


def all_edges() -> list[Edge]:
    edges = []
    for path in sorted(ROOT.rglob("*.py")):
        importer = module_name(path)
        rel = path.relative_to(SRC.parent).as_posix()
        for line, imported in dict.fromkeys(imports_of(path)):
            edges.append(Edge(rel, line, importer, imported))
    return edges


def violation(edge: Edge) -> str | None:
    """Why this import breaks the layering, or None."""
    src, dst = package_of(edge.importer), package_of(edge.imported)
    if src == dst:
        return None
    if src == "krmini.lab" and dst not in FOUNDATION:
        return "lab imports only foundation modules"
    if src == "krmini.tokenizer" and dst == "krmini.data":
        return "tokenizer never imports data"
    if rank(dst) > rank(src):
        return "a lower layer imports a higher one"
    return None


def package_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        src, dst = package_of(edge.importer), package_of(edge.imported)
        graph.setdefault(src, set())
        graph.setdefault(dst, set())
        if src != dst:
            graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_every_package_has_a_layer():
    for path in ROOT.rglob("*.py"):
        rank(package_of(module_name(path)))
    for edge in all_edges():
        rank(package_of(edge.imported))


def test_imports_run_one_way():
    bad = [
        f"{edge}  ({why})"
        for edge in all_edges()
        if (why := violation(edge))
    ]
    if bad:
        pytest.fail("imports against the layering:\n" + "\n".join(bad), pytrace=False)


def shortest_cycle(component: list[str], edges: list[Edge]) -> list[Edge]:
    """One shortest cycle through the component's first package, one import statement per hop."""
    members = set(component)
    hops: dict[str, dict[str, Edge]] = {}
    for e in edges:
        src, dst = package_of(e.importer), package_of(e.imported)
        if src in members and dst in members and src != dst:
            hops.setdefault(src, {}).setdefault(dst, e)
    start = component[0]
    paths: dict[str, list[Edge]] = {start: []}
    queue = [start]
    for node in queue:
        for nxt, edge in sorted(hops.get(node, {}).items()):
            if nxt == start:
                return paths[node] + [edge]
            if nxt not in paths:
                paths[nxt] = paths[node] + [edge]
                queue.append(nxt)
    return []


def test_no_import_cycles_between_packages():
    edges = all_edges()
    cycles = package_cycles(edges)
    lines = []
    for component in cycles:
        lines.append("  " + ", ".join(component) + "; for example:")
        lines += [f"    {e}" for e in shortest_cycle(component, edges)]
    if cycles:
        pytest.fail("packages that import each other:\n" + "\n".join(lines), pytrace=False)


@pytest.mark.parametrize(
    ("importer", "imported", "bad"),
    [
        ("krmini.tokenizer.cli", "krmini.data.prepare", True),
        ("krmini.data.prepare", "krmini.tokenizer.tokenizer", False),
        ("krmini.model.cli", "krmini.train.config", True),
        ("krmini.train.cli", "krmini.model.config", False),
        ("krmini.lab.cli", "krmini.model.llama", True),
        ("krmini.lab.cli", "krmini.errors", False),
        ("krmini.config", "krmini.model.config", True),
        ("krmini.cli", "krmini.serve.cli", False),
        ("krmini.train.__main__", "krmini.cli", True),
        ("krmini.eval.cli", "krmini.chat.template", False),
        ("krmini.apps.memo.ask", "krmini.chat.template", False),
        ("krmini.chat.repl", "krmini.apps.memo.search", True),
        ("krmini.cli", "krmini.apps.memo.cli", False),
    ],
)
def test_the_rules_themselves(importer, imported, bad):
    assert (violation(Edge("f.py", 1, importer, imported)) is not None) is bad


def test_a_cycle_is_found_and_shown():
    edges = [Edge("a.py", 1, "krmini.eval.cli", "krmini.export.hf"), Edge("b.py", 2, "krmini.export.hf", "krmini.eval.ppl"),
             Edge("c.py", 3, "krmini.export.hf", "krmini.errors")]
    assert package_cycles(edges) == [["krmini.eval", "krmini.export"]]
    assert [e.file for e in shortest_cycle(["krmini.eval", "krmini.export"], edges)] == ["a.py", "b.py"]


def test_the_engine_knows_nothing_of_the_speed_layers():
    """infer/engine.py is the plain path: the speed layers (infer/fast/) plug into it from outside."""
    allowed = {"krmini.errors", "krmini.model", "krmini.tokenizer", "krmini.infer.sampling", "krmini.infer.textstream"}
    used = {e.imported for e in all_edges() if e.importer == "krmini.infer.engine"}
    assert used <= allowed, sorted(used - allowed)
    fast_users = {e.importer for e in all_edges() if e.imported.startswith("krmini.infer.fast")
                  and not e.importer.startswith("krmini.infer.fast")}
    # only the builder, the loader (int8 checkpoints are its format), the quantize command, doctor and the benchmarks
    assert fast_users <= {"krmini.infer.build", "krmini.infer.load", "krmini.infer.cli", "krmini.doctor",
                          "krmini.bench.generate", "krmini.bench.export"}, sorted(fast_users)
