"""The binaries: `python -m oneclass_jax.tools.<name>`; nothing imports them.

`oneclass_jax.main` (training) stays at the package top level, where the
design card puts it.
"""
