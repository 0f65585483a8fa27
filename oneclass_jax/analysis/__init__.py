"""The paper's analyses (Sections 3.2.1, 5.1-5.4, Appendix A.2-A.3).

* `gradients`: integrated gradients and GradCAM of any score function.
* `uniformity`: MMD between embeddings and the uniform law on the sphere.
* `sweeps`: grids of training runs and the figures drawn from them.
* `captions`: the scale line every analysis figure carries.

The binaries are `oneclass_jax.tools.explain`, `oneclass_jax.tools.study` and
`oneclass_jax.tools.ensemble`.
"""
