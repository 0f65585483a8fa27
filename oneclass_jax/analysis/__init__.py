"""The paper's analyses and tables (Sections 3.2.1, 5.1-5.4, Appendix A.2-A.3).

* `gradients`: integrated gradients and GradCAM of any score function;
  `explanations`: the paper's explanation figures built on them.
* `uniformity`: MMD between embeddings and the uniform law on the sphere.
* Study grids: `grids` (which runs), `study_runs` (train them, write
  analysis.json), `study_records` (read them back), `study_figures`.
* `tables`: Table 2 and 8-11 from results.json; `ensembles`: Table 6.
* `captions`: the scale line every analysis figure carries.

The binaries are `oneclass_jax.tools.report`, `.ensemble`, `.explain` and
`.study`.
"""
