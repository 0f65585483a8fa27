"""oneclass_jax: deep one-class classification (Sohn et al., ICLR 2021) in JAX.

Importing the package turns XLA:CPU's YNNPACK fusions off unless XLA_FLAGS
already sets `--xla_cpu_experimental_ynn_fusion_type`. With them on (jaxlib
0.10.2) the first contrastive update of ResNet-18 differed from eager,
op-by-op execution by 2.5% (relative L2) against 0.13% with them off, CPU
multi-process runs got NaN gradients, and training was slower (ResNet-18
rotation step 7.4 s -> 4.6 s on 2 cores): docs/deviations.md, "XLA:CPU".
The flag only concerns the CPU backend, and takes effect when JAX starts its
backends, i.e. if this package is imported before the first computation.
"""
import os as _os

_YNN = "--xla_cpu_experimental_ynn_fusion_type"
if _YNN not in _os.environ.get("XLA_FLAGS", ""):
  _os.environ["XLA_FLAGS"] = " ".join(
      filter(None, [_os.environ.get("XLA_FLAGS", ""), _YNN + "="]))
