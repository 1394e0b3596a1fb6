"""The package's import graph, read from the source (ast, nothing imported): no cycles, `kernels`
below `model`, and no library module reaching into the repository's `configs/`.

An edge is any import of a focalnet_jax module, at module level or inside a function (a lazy
import still couples the two modules), except those under `if TYPE_CHECKING:`. `from pkg import
name` points at `pkg.name` when that is a module, else at `pkg` (its `__init__`).
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "focalnet_jax")


def _modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of the package."""
  found = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].split(os.sep)
        found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, name)
  return found


def _is_type_checking(node: ast.If) -> bool:
  test = node.test
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
      isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
  """Every Import/ImportFrom node, skipping the bodies of `if TYPE_CHECKING:`."""
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, ast.If) and _is_type_checking(node):
      yield from (n for child in node.orelse for n in _imports_in(child))
      continue
    yield from _imports_in(node)


def _imports_in(node: ast.AST):
  if isinstance(node, (ast.Import, ast.ImportFrom)):
    yield node
  else:
    yield from _imports(node)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
  """The full names an import statement names (modules, or `pkg.attr` for names in a package)."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  base = node.module or ""
  if node.level:  # relative: from the importing module's package
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[:len(package) - node.level + 1]
    base = ".".join(package + ([base] if base else []))
  return [f"{base}.{alias.name}" if alias.name != "*" else base for alias in node.names]


def import_graph() -> dict[str, set[str]]:
  """module -> the focalnet_jax modules it imports; plus '<configs>' for imports of configs/."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    edges = set()
    for node in _imports(tree):
      for target in _targets(module, path.endswith("__init__.py"), node):
        if target == "configs" or target.startswith("configs."):
          edges.add("<configs>")
        while target and target not in modules:  # `from pkg import name`: the package
          target = target.rpartition(".")[0]
        if target.startswith("focalnet_jax") and target != module:
          edges.add(target)
    graph[module] = edges
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
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
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


@pytest.fixture(scope="module")
def graph():
  return import_graph()


def test_the_graph_sees_the_imports_that_make_a_cycle():
  """The reader itself: lazy imports count, type-only ones do not, a 2-cycle and a 3-cycle are found."""
  source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  from focalnet_jax import b\n"
            "def f():\n  from focalnet_jax.c import x\n")
  tree = ast.parse(source)
  assert [_targets("focalnet_jax.a", False, n) for n in _imports(tree)] == [["typing.TYPE_CHECKING"],
                                                                           ["focalnet_jax.c.x"]]
  assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_covers_the_package(graph):
  assert {"focalnet_jax", "focalnet_jax.weights", "focalnet_jax.evaluation.report"} <= set(graph)
  assert "focalnet_jax.weights" in graph["focalnet_jax"]  # the public from_pretrained


def test_no_import_cycles(graph):
  assert cycles(graph) == []


def folders(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  """The graph between the package's folders (model, kernels, weights, ...; a top-level module is its own)."""
  def folder(module: str) -> str:
    return ".".join(module.split(".")[:2])

  merged = {}
  for module, edges in graph.items():
    merged.setdefault(folder(module), set()).update(folder(t) for t in edges if t != "<configs>")
  return {f: edges - {f} for f, edges in merged.items()}


def test_no_import_cycles_between_folders(graph):
  """The folders form layers (model below weights below evaluation below tools): no two reach each other."""
  assert cycles(folders(graph)) == []


def test_library_modules_import_no_repository_configs(graph):
  """configs/ is the repository's, not the installed package's: a library module gets its
  settings passed in (the scripts at the repository root read configs/)."""
  assert sorted(m for m, edges in graph.items() if "<configs>" in edges) == []


def test_kernels_import_nothing_from_the_model(graph):
  upward = sorted(f"{m} -> {t}" for m, edges in graph.items() if m.startswith("focalnet_jax.kernels")
                  for t in edges if t == "focalnet_jax.model" or t.startswith("focalnet_jax.model."))
  assert upward == []


def test_the_library_leans_on_no_tool(graph):
  """`focalnet_jax.from_pretrained`, evaluation and the rest of the library import no `tools`
  module: the command lines sit on top of the library, never under it."""
  library = [m for m in graph if not m.startswith("focalnet_jax.tools")]
  assert sorted(f"{m} -> {t}" for m in library for t in graph[m] if t.startswith("focalnet_jax.tools")) == []


def test_modules_and_functions_are_small_enough_to_read_in_one_sitting():
  """No module of the package (or config) over 400 lines, no function over 80: one concept each."""
  too_long = []
  for folder in (ROOT, os.path.join(os.path.dirname(ROOT), "configs")):
    for dirpath, _, files in os.walk(folder):
      for name in (n for n in files if n.endswith(".py")):
        path = os.path.join(dirpath, name)
        with open(path) as f:
          source = f.read()
        if len(source.splitlines()) > 400:
          too_long.append(f"{path}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source, path)):
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
            too_long.append(f"{path}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
  assert not too_long, "split these:\n" + "\n".join(too_long)
