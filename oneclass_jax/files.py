"""Workdir files on local disks and object stores (gs://) alike.

Every path goes through `etils.epath` (gs:// via gcsfs when TensorFlow is
absent; `pip install .[gcs]`). Writes are all-or-nothing so that a killed run
never leaves a half-written results file:

* local paths: written to a temporary sibling, then renamed over the target
  (rename is atomic on POSIX file systems);
* object stores: written in one object upload, which GCS makes visible only
  once complete; a rename there would be a copy and a delete, so none is done.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import sys
import time
from typing import Any, Iterator

from etils import epath
import numpy as np


def is_remote(path) -> bool:
  """True for URLs such as gs://bucket/dir (no local rename or append)."""
  return "://" in os.fspath(path)


def path(p) -> epath.Path:
  """An epath for a local path or a URL."""
  return epath.Path(p)


def write_atomic(target, data: bytes | str) -> None:
  """Writes `data` to `target` so readers see the old or the new file whole."""
  target = path(target)
  if is_remote(target):
    _write(target, data)
    return
  tmp = target.parent / f"{target.name}.tmp.{os.getpid()}"
  try:
    _write(tmp, data)
    tmp.replace(target)
  finally:
    if tmp.exists():
      tmp.unlink()


def _write(p: epath.Path, data: bytes | str) -> None:
  if isinstance(data, str):
    p.write_text(data)
  else:
    p.write_bytes(data)


def write_json(target, obj: Any) -> None:
  write_atomic(target, json.dumps(obj, indent=2, sort_keys=True))


def read_json(source) -> Any:
  return json.loads(path(source).read_text())


def npz_bytes(**arrays) -> bytes:
  """The bytes of `np.savez(**arrays)` (written whole, see write_atomic)."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def load_npz(source) -> dict[str, np.ndarray]:
  with path(source).open("rb") as f:
    with np.load(io.BytesIO(f.read())) as npz:
      return dict(npz)


def write_dir_atomic(root, contents: dict[str, bytes | str]) -> None:
  """Makes folder `root` hold exactly `contents` ({file name: data}).

  Locally the folder is written aside and swapped in, so `root` always holds
  one complete set. On object stores (no directory rename) the last entry of
  `contents` is the completion marker: it is deleted first and written last,
  so readers that require it never take a half-written set.
  """
  root = path(root)
  names = list(contents)
  if is_remote(root):
    root.mkdir(parents=True, exist_ok=True)
    marker = root / names[-1]
    if marker.exists():
      marker.unlink()
    for name in names:
      _write(root / name, contents[name])
    return
  tmp = root.parent / f"{root.name}.tmp.{os.getpid()}"
  old = root.parent / f"{root.name}.old.{os.getpid()}"
  for leftover in (tmp, old):
    if leftover.exists():
      leftover.rmtree()
  tmp.mkdir(parents=True)
  for name in names:
    _write(tmp / name, contents[name])
  if root.exists():
    root.rename(old)
  tmp.rename(root)
  if old.exists():
    old.rmtree()


LOCK_FILE = ".lock"


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir."""


@contextlib.contextmanager
def workdir_lock(workdir) -> Iterator[None]:
  """Holds `workdir/.lock` exclusively while the block runs.

  An advisory `flock`: the kernel drops it when the holder exits in any way
  (SIGKILL included), so a killed run never leaves a stale lock, and the
  file's content (pid, host, start time, command) only names the holder in
  the error. Object stores (gs://) have no locks: there the block runs
  unlocked (one job per workdir is the user's to ensure). Network file
  systems without flock support fail the lock with OSError.

  Raises:
    WorkdirBusy: another process holds the lock; the message names it.
  """
  root = path(workdir)
  if is_remote(root):
    yield
    return
  lock_path = os.path.join(os.fspath(root), LOCK_FILE)
  try:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise PermissionError(f"Workdir {os.fspath(root)!r} is not writable "
                          f"({e}); pass a --workdir you can write to.") from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
      raise WorkdirBusy(
          f"Workdir {workdir} is in use by another process "
          f"({holder or 'unknown holder'}). Wait for it to finish, stop it, "
          "or pass another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"pid {os.getpid()} on host {socket.gethostname()} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}: "
                   f"{' '.join(sys.argv)[:500]}\n").encode(), 0)
    yield
  finally:
    os.close(fd)  # Closing the descriptor releases the lock.
