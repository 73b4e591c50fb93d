"""The layers point one way: core/ at the bottom; pipeline/, fomm/ and metrics/ on it; detect/
(the fakes dataset and the detector) on those; the command line (stages.cli,
stages.run_all) and benchmarks/ on top.

Every import is counted, the ones inside functions too, so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "pipeline", "fomm", "metrics", "detect", "stages", "benchmarks")
# the top: modules allowed to import any layer (they dispatch to the stages)
# the top: stages/ (the front door: command line, run all, app, a module per stage) and benchmarks/
TOP_LAYERS = ("stages", "benchmarks")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `name` imports anywhere in its file."""
    found = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[:len(package) - (node.level - 1)]
                base = ".".join(prefix + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    allowed = {"core": {"core"}, "pipeline": {"core", "pipeline"}, "fomm": {"core", "fomm"},
               "metrics": {"core", "fomm", "metrics"},
               "detect": {"core", "fomm", "metrics", "pipeline", "detect"}}
    problems = []
    for name, targets in graph.items():
        layer = name.split(".")[0]
        if layer in TOP_LAYERS or layer not in allowed:
            continue
        for target in sorted(targets):
            if target.split(".")[0] not in allowed[layer]:
                problems.append(f"{name} imports {target}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_layers_point_one_way():
    assert layer_violations(import_graph()) == []


def test_no_file_level_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The same checks on a small tree with one upward import and one cycle."""
    files = {
        "core/__init__.py": "", "core/a.py": "import fomm.b\n",
        "fomm/__init__.py": "", "fomm/b.py": "from fomm import c\n",
        "fomm/c.py": "def f():\n    from . import b\n",
        "pipeline/__init__.py": "", "metrics/__init__.py": "", "benchmarks/__init__.py": "",
        "detect/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert layer_violations(graph) == ["core.a imports fomm.b"]
    assert cycles(graph) == [["fomm.b", "fomm.c"]]


@pytest.mark.parametrize("package", ["fomm", "metrics"])
def test_models_and_metrics_import_without_the_data_stages(package):
    """fomm and metrics load in a fresh interpreter that cannot import `pipeline`."""
    import subprocess
    import sys
    modules = [name for name in module_files() if name.split(".")[0] == package]
    code = ("import sys; sys.modules['pipeline'] = None\n"
            + "".join(f"import {name}\n" for name in modules))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_only_the_front_door_parses_arguments():
    """No module below stages/ builds a command line: argparse (and a stage's `add_arguments`
    / `main(args)`) lives in stages/, which turns arguments into typed options and calls the
    library."""
    offenders = []
    for name, path in module_files().items():
        if name.split(".")[0] in TOP_LAYERS:
            continue
        tree = ast.parse(path.read_text(), str(path))
        imports_argparse = any(isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names)
                               or isinstance(node, ast.ImportFrom) and node.module == "argparse"
                               for node in ast.walk(tree))
        parses = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                  and node.name in ("add_arguments", "main", "build_parser")]
        if imports_argparse or parses:
            offenders.append(f"{name}: {'argparse ' if imports_argparse else ''}{' '.join(parses)}".strip())
    assert offenders == []


def test_every_stage_has_a_typed_front_door():
    """Each stage of the command line is a module of stages/ with add_arguments, options, run
    and main."""
    import importlib

    from stages.cli import STAGES
    for stage, (module_name, _) in STAGES.items():
        assert module_name.startswith("stages."), stage
        module = importlib.import_module(module_name)
        for function in ("add_arguments", "options", "run", "main"):
            assert callable(getattr(module, function, None)), f"{module_name}.{function}"
