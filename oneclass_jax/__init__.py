"""oneclass_jax: deep one-class classification (Sohn et al., ICLR 2021) in JAX."""
