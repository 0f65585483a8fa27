"""The package's dependencies point one way (issue #18).

Walks every import statement of every module (function-local ones too) with
`ast`, so the checks hold for the source, not for one import order.
"""
import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "oneclass_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict:
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  edges = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.level == 0 and (
          node.module or "").startswith("oneclass_jax"):
        for alias in node.names:
          full = f"{node.module}.{alias.name}"
          targets.add(full if full in modules else node.module)
      elif isinstance(node, ast.Import):
        targets.update(a.name for a in node.names
                       if a.name.startswith("oneclass_jax"))
    edges[name] = targets - {name}
  return edges


def _reachable(edges, start) -> set:
  seen, todo = set(), [start]
  while todo:
    for nxt in edges.get(todo.pop(), ()):
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  return seen


def _imported_on_load(edges, module) -> set:
  """`module`, what it reaches, and the packages above each: what runs."""
  seen, todo = set(), [module]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    parts = name.split(".")
    todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    todo += list(edges.get(name, ()))
  return seen


def _imports_outside(path: pathlib.Path) -> set:
  """Top-level names of the non-package modules `path` imports."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add((node.module or "").split(".")[0])
    elif isinstance(node, ast.Import):
      names.update(a.name.split(".")[0] for a in node.names)
  return names - {"oneclass_jax"}


def test_graph_walk_sees_known_edges():
  edges = _graph()
  assert "oneclass_jax.experiment" in edges["oneclass_jax.train"]
  assert "oneclass_jax.detectors.base" in edges["oneclass_jax.detectors.kde"]


def test_no_import_cycle():
  edges = _graph()
  cycles = sorted(m for m in edges if m in _reachable(edges, m))
  assert not cycles, f"modules on an import cycle: {cycles}"


def test_evaluators_and_setup_never_reach_the_trainer():
  edges = _graph()
  for low in ("oneclass_jax.experiment", "oneclass_jax.evaluators",
              "oneclass_jax.embeddings", "oneclass_jax.detectors",
              "oneclass_jax.score", "oneclass_jax.explain"):
    reached = _reachable(edges, low)
    assert "oneclass_jax.train" not in reached, low
    assert "oneclass_jax.multi" not in reached, low


def test_binaries_are_not_imported():
  edges = _graph()
  for binary in ("oneclass_jax.evaluate", "oneclass_jax.main"):
    importers = sorted(m for m, t in edges.items() if binary in t)
    assert not importers, f"{binary} is imported by {importers}"


def test_task_is_chosen_in_one_place():
  pattern = re.compile(r"""[=!]=\s*["']mvtec["']|["']mvtec["']\s*[=!]=""")
  offenders = sorted(
      str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
      if pattern.search(p.read_text()) and p.name != "experiment.py")
  assert not offenders, offenders


def test_dataset_table_and_splits_load_no_tensorflow_datasets():
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  edges = _graph()

  def tfds_users(module):
    return sorted(m for m in _imported_on_load(edges, module)
                  if "tensorflow_datasets" in _imports_outside(modules[m]))

  assert tfds_users("oneclass_jax.data.sources")  # The check sees tfds.
  for light in ("oneclass_jax.data", "oneclass_jax.data.datasets",
                "oneclass_jax.data.splits", "oneclass_jax.data.augment"):
    assert not tfds_users(light), (light, tfds_users(light))
