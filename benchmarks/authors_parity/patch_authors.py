r"""Patches a checkout of the authors' TF2 code so it runs today, and fairly.

  python benchmarks/authors_parity/patch_authors.py --checkout=/tmp/authors_code

The checkout is google-research/deep_representation_one_class at commit
a36feaa2 (README.md beside this file says how to get it); it is never copied
into this repository. Each patch is the smallest edit that makes their code
run with today's NumPy / TensorFlow / scikit-learn, plus the initializer fix
without which the comparison would measure a tf_keras trap rather than their
method. `PATCHES` says why for each.

Safe to run again: a file already patched is left alone. It refuses, and
changes nothing, when the checkout is a git repository at another commit or
when a file is neither the text of that commit nor its patched text. Standard
library only: it runs with any Python 3.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys

COMMIT = "a36feaa2e2f1f8d4aabe24d219e2220b187bd315"
REPOSITORY = "github.com/google-research/deep_representation_one_class"


@dataclasses.dataclass(frozen=True)
class Patch:
  """Edits of one file: each `old` occurs exactly once in the original."""
  path: str
  original_sha256: str
  edits: tuple[tuple[str, str], ...]
  why: str


PATCHES = (
    Patch(
        "data/data_util.py",
        "40f0295a2cc6801872b0a06266c0949aaab6c9861ed5c0484fbeeae37337d20a",
        (("np.int(np.ceil(batch_size / num_data))",
          "int(np.ceil(batch_size / num_data))"),),
        "np.int was removed in NumPy 1.24 (AttributeError when the "
        "training set is built)."),
    Patch(
        "util/train.py",
        "373b3c56b027a42fc91c497a9387e6964a8f76e23b36c919dace9461f180595c",
        (("self.optimizer.learning_rate(\n",
          "self.scheduler(\n"),
         ("OneClassSVM(kernel='rbf', gamma=gamma)",
          "OneClassSVM(kernel='rbf', gamma=float(gamma))")),
        "Keras >= 2.11 optimizers return the current rate from "
        "`optimizer.learning_rate`, not the schedule (TypeError: not "
        "callable, at the first epoch); the schedule itself is "
        "`self.scheduler`. scikit-learn >= 1.2 validates gamma and rejects "
        "the TF EagerTensor they pass (InvalidParameterError in the OC-SVM "
        "evaluation)."),
    Patch(
        "model/resnet_util.py",
        "c94b8560be718864e39df47e3f62f8a3785d8af6b0aafb21a7f04a4e800edb59",
        (("      kernel_initializer=kernel_initializer,\n",
          "      kernel_initializer=kernel_initializer.from_config(\n"
          "          kernel_initializer.get_config()),\n"),),
        "Every conv shares one unseeded VarianceScaling instance (a default "
        "argument); tf_keras returns identical values from an unseeded "
        "initializer called again, so every conv of the same shape would "
        "start with the same kernel. A fresh copy per layer draws its own "
        "(from Python's `random`, which their --seed > 0 seeds)."),
)


class PatchError(ValueError):
  """The checkout is not the expected commit, or a file is unexpected."""


def _sha256(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def _replace_once(text: str, old: str, new: str, path: str) -> str:
  count = text.count(old)
  if count != 1:
    raise PatchError(f"{path}: expected {old!r} once, found it {count} times.")
  return text.replace(old, new)


def _state(root: pathlib.Path, patch: Patch) -> tuple[str, str]:
  """('original' | 'patched', the file's text); PatchError if neither."""
  path = root / patch.path
  if not path.is_file():
    raise PatchError(f"{path} is missing: --checkout must be the root of "
                     f"{REPOSITORY} at commit {COMMIT[:8]}.")
  text = path.read_text()
  if _sha256(text) == patch.original_sha256:
    return "original", text
  unpatched = text
  try:
    for old, new in reversed(patch.edits):
      unpatched = _replace_once(unpatched, new, old, patch.path)
  except PatchError:
    unpatched = None
  if unpatched is not None and _sha256(unpatched) == patch.original_sha256:
    return "patched", text
  raise PatchError(
      f"{path} is neither the text of commit {COMMIT[:8]} (sha256 "
      f"{patch.original_sha256[:16]}...) nor that text with this script's "
      f"patch (it has sha256 {_sha256(text)[:16]}...): it was edited or "
      f"comes from another commit. Fetch {REPOSITORY} at {COMMIT[:8]} into a "
      "fresh folder and patch that.")


def check_commit(root: pathlib.Path, commit: str = COMMIT) -> None:
  """A git checkout must be at `commit` (an exported tree has no .git)."""
  if not (root / ".git").exists():
    return  # `git archive` output: the file hashes identify the commit.
  try:
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True)
  except (OSError, subprocess.CalledProcessError) as e:
    raise PatchError(f"{root} has .git but `git rev-parse HEAD` failed "
                     f"({e}); export the tree with `git archive` instead.") \
        from e
  if head.stdout.strip() != commit:
    raise PatchError(f"{root} is at commit {head.stdout.strip()[:12]}, not "
                     f"{commit[:8]}: `git -C {root} checkout {commit[:8]}` "
                     "(or fetch that commit into a fresh folder).")


def apply(root, patches=PATCHES, commit: str = COMMIT) -> dict[str, str]:
  """Patches the checkout at `root`; returns {path: 'patched' | 'already'}.

  All files are checked and patched in memory before any is written, so a
  refusal changes nothing.

  Raises:
    PatchError: another commit, a missing file, or a file whose text is
      neither the expected original nor its patched form.
  """
  root = pathlib.Path(root)
  check_commit(root, commit)
  done, writes = {}, []
  for patch in patches:  # Everything is checked before anything is written.
    state, text = _state(root, patch)
    done[patch.path] = "already" if state == "patched" else "patched"
    if state == "original":
      for old, new in patch.edits:
        text = _replace_once(text, old, new, patch.path)
      writes.append((root / patch.path, text))
  for path, text in writes:
    tmp = path.with_name(f".{path.name}.patching")
    tmp.write_text(text)
    os.replace(tmp, path)
  return done


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkout", required=True,
                      help=f"root of {REPOSITORY} at {COMMIT[:8]}")
  args = parser.parse_args()
  try:
    done = apply(args.checkout)
  except PatchError as e:
    print(f"patch_authors: {e}", file=sys.stderr)
    return 1
  for patch in PATCHES:
    print(f"{done[patch.path]:>8}  {patch.path}: {patch.why}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
