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
  assert "oneclass_jax.experiment" in edges["oneclass_jax.trainer.single"]
  assert "oneclass_jax.detectors.base" in edges["oneclass_jax.detectors.kde"]


def test_no_import_cycle():
  edges = _graph()
  cycles = sorted(m for m in edges if m in _reachable(edges, m))
  assert not cycles, f"modules on an import cycle: {cycles}"


def test_evaluators_and_setup_never_reach_the_trainer():
  edges = _graph()
  for low in ("oneclass_jax.experiment", "oneclass_jax.evaluators",
              "oneclass_jax.embeddings", "oneclass_jax.detectors",
              "oneclass_jax.scoring", "oneclass_jax.analysis.explanations"):
    reached = _reachable(edges, low)
    trainer = sorted(m for m in reached if m.startswith("oneclass_jax.trainer"))
    assert not trainer, (low, trainer)


def test_exported_scorer_loader_imports_no_package_module():
  # A serving process loads an exported model with numpy and jax only
  # (tests/test_export.py checks the modules a real import pulls in).
  edges = _graph()
  assert edges["oneclass_jax.scorer"] == set()
  assert edges["oneclass_jax"] == set()  # __init__.py, imported first.


def test_binaries_are_not_imported():
  # Binaries (oneclass_jax.main, oneclass_jax.tools.*) define their flags at
  # import; nothing in the package or the tests imports them (tests run them
  # as subprocesses), so their library code lives in library modules.
  edges = _graph()
  binaries = {m for m in edges
              if m == "oneclass_jax.main" or m.startswith("oneclass_jax.tools.")}
  assert "oneclass_jax.tools.report" in binaries
  importers = sorted(m for m, t in edges.items() if t & binaries)
  assert not importers, importers
  tests = pathlib.Path(__file__).resolve().parent
  pattern = re.compile(r"^\s*(from oneclass_jax\.tools\b|from oneclass_jax "
                       r"import (main|tools)\b|import oneclass_jax\.tools)",
                       re.M)
  offenders = sorted(p.name for p in tests.glob("*.py")
                     if pattern.search(p.read_text()))
  assert not offenders, offenders


def test_task_is_chosen_in_one_place():
  pattern = re.compile(r"""[=!]=\s*["']mvtec["']|["']mvtec["']\s*[=!]=""")
  offenders = sorted(
      str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
      if pattern.search(p.read_text()) and p.name != "experiment.py")
  assert not offenders, offenders


def _files_using(pattern: str) -> list[str]:
  regex = re.compile(pattern)
  return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                if regex.search(p.read_text()))


def test_one_training_loop():
  # The loop's side effects (preemption, metric writers, the NaN check) live
  # in trainer/loop.py only; the single- and K-model runs hand it a Job.
  assert _files_using(r"PreemptionGuard\(") == ["trainer/loop.py"]
  assert _files_using(r"MetricWriter\(") == ["trainer/loop.py"]
  assert _files_using(r"loop\.train\(") == ["trainer/multi.py",
                                             "trainer/single.py"]


def test_one_owner_of_the_run_files():
  # The run directory's file names are spelled in workdir.py only.
  for name in ("results.json", "scores.npz", "config.json", "summary.json",
               "analysis.json"):
    owners = _files_using(re.escape(f'"{name}"'))
    assert owners == ["workdir.py"], (name, owners)


def test_dataset_table_and_splits_load_no_tensorflow_datasets():
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  edges = _graph()

  def tfds_users(module):
    return sorted(m for m in _imported_on_load(edges, module)
                  if "tensorflow_datasets" in _imports_outside(modules[m]))

  assert tfds_users("oneclass_jax.data.sources")  # The check sees tfds.
  for light in ("oneclass_jax.data", "oneclass_jax.data.datasets",
                "oneclass_jax.data.splits", "oneclass_jax.data.augment",
                "oneclass_jax.data.geometric",
                "oneclass_jax.analysis.captions"):
    assert not tfds_users(light), (light, tfds_users(light))


def test_no_function_local_imports_of_the_package():
  # A function-local import hid the old import circle; none is left.
  offenders = []
  for path in PACKAGE.rglob("*.py"):
    tree = ast.parse(path.read_text())
    for func in ast.walk(tree):
      if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for node in ast.walk(func):
          if isinstance(node, ast.ImportFrom) and (
              node.module or "").startswith("oneclass_jax"):
            offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
  assert not offenders, offenders
