"""Defect detection and localization on MVTec-AD-style categories (Sec. 4.2).

Representations are learnt on 32 x 32 patches and evaluated densely:

* `patches`: patch-grid geometry and dense patch extraction;
* `data`: the training crops, the dense training patches and the test images
  of one category, as a `one_class.OneClassData`;
* `memory_bank`: random and greedy-coreset memory banks;
* `localize`: Gaussian transposed-convolution upsampling of score grids;
* `evaluate`: dense KDE scoring, image/pixel AUROC, AUPRO, heatmaps.

`base_config` is the config shared by `configs/mvtec_*.py`.
"""
import ml_collections

from oneclass_jax import config_lib


def base_config(arg: str | None, **extra) -> ml_collections.ConfigDict:
  """`config_lib.base_config` for patches of one MVTec category.

  Args:
    arg: the config variant string: category (default magnetic_tile), root
      (the folder holding the category folder), seed, runlocal, and the
      keys of `extra`.
    **extra: more variant keys with their defaults (e.g. dist_aug).

  Returns:
    An unlocked ConfigDict with the `mvtec` block. `data.inlier_class` and
    `mvtec.category` share one field reference, and so do
    `model.image_size` and `mvtec.patch_size`: overriding either one on the
    command line sets both. Callers read their `extra` keys with
    `parse_variant(arg, **extra)`.
  """
  parsed = parse_variant(arg, **extra)
  c = config_lib.base_config(parsed)
  c.mvtec = ml_collections.ConfigDict(dict(
      root=parsed.root,       # Folder holding <category>/ (MVTec AD layout).
      category=parsed.category,
      image_size=256,         # Every image resized to this square (App. B.2).
      patch_size=32,          # Side of the training / scoring patches.
      stride=4,               # Dense-scoring stride: a 57 x 57 grid.
      patches_per_image=64,   # Random training crops per image per epoch.
      memory_bank="coreset",  # 'coreset', 'random' or 'full'.
      memory_bank_size=20_000,
      coreset_pool=200_000,   # Random candidates the coreset is chosen from.
      coreset_projection=128,  # Random-projection dims for selection; 0 = off.
      sigma=10.0,             # Gaussian of the 32 x 32 upsampling kernel.
      normalize_map=True,     # Weighted mean of overlapping patch scores.
      images_per_chunk=16,    # Test images embedded and scored at a time.
      aupro_max_fpr=0.3,
      heatmaps=16,            # Test images drawn as heatmap PNGs.
  ))
  c.data.name = "mvtec"
  c.data.inlier_class = c.mvtec.get_ref("category")
  c.model.image_size = c.mvtec.get_ref("patch_size")
  c.eval.detectors = ("kde",)
  if not parsed.runlocal:
    # The paper gives no schedule for MVTec; ours: 50 epochs of the
    # 600 x 64 magnetic-tile crops (60k steps at batch 32).
    c.total_epochs = 50
  else:
    c.mvtec.stride = 16
    c.mvtec.patches_per_image = 8
    c.mvtec.memory_bank_size = 2_000
    c.mvtec.coreset_pool = 10_000
    c.mvtec.heatmaps = 4
  return c


def parse_variant(arg: str | None, **extra) -> ml_collections.ConfigDict:
  """The variant keys of every MVTec config, plus `extra`."""
  parsed = config_lib.parse_arg(arg, category="magnetic_tile", root="",
                                seed=0, runlocal=False, **extra)
  # config_lib.base_config reads these two.
  parsed.dataset = "mvtec"
  parsed.inlier_class = parsed.category
  return parsed
