"""Prints the workdirs that hold no complete results yet.

  python -m oneclass_jax.tools.unfinished DIR...

A workdir is finished when it holds results.json (written last and
atomically by the evaluation, `workdir.write_results`); `launch/sweep.sh`
skips finished jobs with this. Paths may be local or gs:// (etils.epath;
gs:// needs gcsfs).
"""
import sys

from oneclass_jax import workdir


def main(argv) -> int:
  if len(argv) < 2:
    print("usage: python -m oneclass_jax.tools.unfinished DIR...",
          file=sys.stderr)
    return 2
  for path in workdir.unfinished(argv[1:]):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
