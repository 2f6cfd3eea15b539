"""The package's layers, as data, and the import graph that must keep to them.

Every import statement under vitprune/ is read from the source (function-level ones included, relative imports
resolved), mapped to the layer of the module it names, and checked: an import never goes up a layer, imports
sideways (between parts of one layer) never close a cycle, and an import inside a function is only there for an
optional extra or for the CLI's deferred import of the library, with a comment saying which (the other ones left
are counted per module in FUNCTION_LEVEL_LEFT, and the counts only go down). The order is written for readers in
docs/architecture.md.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Iterator, NamedTuple

PACKAGE = Path(__file__).resolve().parents[1] / "vitprune"

# Lowest first. A part is a subpackage or a top-level module (or, where a module's job sits above its folder's
# layer, that module: "exporter.core"); it may import from its own layer, sideways without closing a cycle, or from
# any layer below. A package's ``__init__`` is the part "<package>.__init__" when it is listed, else its package.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "settings", "files", "tensorfiles", "offline", "assets", "modelfolder"),
    ("ops",),
    ("methods", "fastpath"),
    ("measure",),
    ("data", "train"),
    # measure.models times models on every runtime, exporting them to ONNX for onnxruntime (exporter.graph)
    ("hub", "report", "exporter", "measure.models"),
    # the jobs: profile and evaluate (api), visualize, compress, sweep, export (exporter.core, re-exported by the
    # exporter package), push (hub.push, which can run an export first), profile --update-card (report.remeasure)
    ("budget", "api", "tokenmaps", "compression", "sweeps", "exporter.core", "exporter.__init__", "hub.push",
     "report.remeasure"),
    ("cli", "__main__"),
]
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}

# Third-party packages a user installs through an extra: importing them inside the function that needs them keeps
# the core install working without them.
OPTIONAL_EXTRAS = {"onnx", "onnxruntime", "onnxscript", "wandb", "tensorboard", "torch.utils.tensorboard",
                   "datasets", "webdataset", "matplotlib", "transformers", "skimage", "sklearn"}
EXTRA_COMMENT = "optional extra"
CLI_COMMENT = "deferred: CLI startup"

# Imports left out of the cycle checks, each with its reason (the layer checks still see them).
CYCLE_EXCEPTIONS: dict[tuple[str, str], str] = {}

# Imports inside functions that are neither an optional extra nor the CLI's deferral, per module: what is left to
# hoist to the top of the module. A count may only go down.
FUNCTION_LEVEL_LEFT: dict[str, int] = {}


class Import(NamedTuple):
    module: str      # the importing module, e.g. "vitprune.hub.save"
    target: str      # what it imports, resolved: "vitprune.report.card", "torch", ...
    line: int
    in_function: bool
    comment: str     # the text after '#' on the import's lines, if any


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(known: dict[str, Path], base: str, names: list[str]) -> list[str]:
    """`from base import a, b`: each name that is a submodule is the target, otherwise base itself."""
    out = []
    for name in names:
        sub = f"{base}.{name}"
        out.append(sub if sub in known else base)
    return out


def _walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue  # never executed: imports for annotations only
        fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _walk(child, fn)


@lru_cache(maxsize=None)
def imports() -> tuple[Import, ...]:
    known = modules()
    found = []
    for name, path in known.items():
        source = path.read_text()
        lines = source.splitlines()
        is_package = path.name == "__init__.py"
        for node, in_function in _walk(ast.parse(source), False):
            text = " ".join(lines[node.lineno - 1:node.end_lineno])
            comment = text.split("#", 1)[1].strip() if "#" in text else ""
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base in known:
                    targets = _resolve(known, base, [a.name for a in node.names])
                else:
                    targets = [base]
            for t in dict.fromkeys(targets):
                found.append(Import(name, t, node.lineno, in_function, comment))
    return tuple(found)


def part(module: str) -> str:
    """The layer part of a vitprune module: 'vitprune.hub.save' -> 'hub', 'vitprune.api' -> 'api',
    'vitprune.exporter.core' -> 'exporter.core' (listed on its own)."""
    if "." not in module:
        return ""
    rel = module.split(".", 1)[1]
    if PACKAGE.joinpath(*rel.split("."), "__init__.py").exists() and f"{rel}.__init__" in LAYER_OF:
        return f"{rel}.__init__"
    parts = rel.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYER_OF:
            return ".".join(parts[:n])
    return parts[0]


def internal(imp: Import) -> bool:
    return imp.target.startswith("vitprune.") and imp.module != "vitprune"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _checked(imp: Import) -> bool:
    return internal(imp) and (imp.module, imp.target) not in CYCLE_EXCEPTIONS


def part_cycles(found: tuple[Import, ...]) -> list[list[str]]:
    edges = defaultdict(set)
    for imp in filter(_checked, found):
        a, b = part(imp.module), part(imp.target)
        if a != b:
            edges[a].add(b)
    return _cycles(edges)


def module_cycles(found: tuple[Import, ...]) -> list[list[str]]:
    """Cycles between the modules of one part (a package importing its own submodules is no edge back)."""
    edges = defaultdict(set)
    for imp in filter(_checked, found):
        if part(imp.module).split(".")[0] == part(imp.target).split(".")[0] and imp.module != imp.target:
            edges[imp.module].add(imp.target)
    return _cycles(edges)


def test_the_reader_sees_relative_and_function_level_imports():
    """The checks below see what Python runs: `from .demo import DigitsDemo` at the top of data/images.py, and
    cli/eval.py's `from ..hub import load_model` inside its command function."""
    found = {(i.module, i.target, i.in_function) for i in imports()}
    assert ("vitprune.data.images", "vitprune.data.demo", False) in found
    assert ("vitprune.cli.eval", "vitprune.hub", True) in found
    assert part("vitprune.exporter.core") == "exporter.core" and part("vitprune.exporter") == "exporter.__init__"
    assert part("vitprune.exporter.graph") == "exporter" and part("vitprune.api") == "api"


def test_every_part_has_a_layer():
    parts = {part(m) for m in modules()} - {""}
    assert sorted(parts - set(LAYER_OF)) == [], "add the new module or subpackage to LAYERS"
    assert sorted(set(LAYER_OF) - parts) == [], "LAYERS names a part that no longer exists"


def test_no_import_goes_up_a_layer():
    up = [f"{imp.module}:{imp.line} imports {imp.target} ({part(imp.module)} is below {part(imp.target)})"
          for imp in filter(internal, imports()) if LAYER_OF[part(imp.target)] > LAYER_OF[part(imp.module)]]
    assert up == []


def test_no_import_cycles_between_parts():
    assert part_cycles(imports()) == []


def test_no_import_cycles_between_modules():
    assert module_cycles(imports()) == []


def _kind(imp: Import) -> str:
    root = imp.target.split(".")[0]
    if imp.target in OPTIONAL_EXTRAS or root in OPTIONAL_EXTRAS:
        return "extra"
    if part(imp.module) == "cli" and internal(imp) and part(imp.target) != "cli":
        return "cli"
    return "other"


def _left(found: tuple[Import, ...]) -> dict[str, int]:
    left: dict[str, int] = defaultdict(int)
    for imp in found:
        if imp.in_function and _kind(imp) == "other":
            left[imp.module] += 1
    return dict(left)


def test_function_level_imports_are_extras_or_cli_deferrals_and_say_so():
    found = imports()
    unmarked = []
    for imp in found:
        kind = _kind(imp)
        if imp.in_function and kind != "other":
            tag = EXTRA_COMMENT if kind == "extra" else CLI_COMMENT
            if tag not in imp.comment:
                unmarked.append(f"{imp.module}:{imp.line} imports {imp.target} without '# {tag}'")
    assert unmarked == []
    grown = {m: (n, FUNCTION_LEVEL_LEFT.get(m, 0)) for m, n in _left(found).items()
             if n > FUNCTION_LEVEL_LEFT.get(m, 0)}
    assert grown == {}, ("import at the top of the module (an import inside a function is for an optional extra "
                         "or the CLI's deferral only): module -> (now, allowed)")


def test_function_level_counts_are_kept_current():
    """When imports are hoisted, FUNCTION_LEVEL_LEFT goes down with them, so the ratchet stays tight."""
    left = _left(imports())
    stale = {m: (left.get(m, 0), n) for m, n in FUNCTION_LEVEL_LEFT.items() if left.get(m, 0) != n}
    assert stale == {}, "update FUNCTION_LEVEL_LEFT: module -> (now, recorded)"


if __name__ == "__main__":  # a summary of the graph: python tests/test_layers.py
    found = imports()
    fn = [i for i in found if i.in_function]
    print(f"{len(found)} imports, {len(fn)} inside functions")
    per = defaultdict(lambda: defaultdict(int))
    for i in fn:
        per[i.module][_kind(i)] += 1
    for m in sorted(per, key=lambda m: -sum(per[m].values())):
        print(f"  {m}: {dict(per[m])}")
    print("left:", _left(found))
    print("part cycles:", part_cycles(found))
    print("module cycles:", module_cycles(found))
    print("up-layer imports:")
    for imp in filter(internal, found):
        if LAYER_OF.get(part(imp.target), 99) > LAYER_OF.get(part(imp.module), 99):
            print(f"  {imp.module}:{imp.line} -> {imp.target}")
