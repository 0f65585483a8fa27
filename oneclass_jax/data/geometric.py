"""The geometric transforms of distribution augmentation (no tfds, no JAX).

Distribution augmentation uses the authors' ordered list
(`geotrans_array_deterministic`): id, hflip, rot90, rot90+hflip, rot180,
rot180+hflip, rot270, rot270+hflip. Transform t rotates by k = t // 2
quarter turns counter-clockwise (`np.rot90(image, k, axes=(0, 1))`) and then,
when t is odd, flips the width axis: "rotK+hflip" means rotate first, then
flip, i.e. `np.flip(np.rot90(image, k), axis=1)`, exactly as the authors'
code flips each rotated copy (it equals hflip first, then rotating by 4 - k).
"""
import numpy as np

GEOMETRIC_TRANSFORMS = ("id", "hflip", "rot90", "rot90+hflip", "rot180",
                        "rot180+hflip", "rot270", "rot270+hflip")

DIST_AUG = {
    "none": (0,),
    "rot90": (0, 2, 4, 6),
    "hflip": (0, 1),
    "rot90+hflip": tuple(range(8)),
}

def apply_geometric(image: np.ndarray, t: int) -> np.ndarray:
  """Transform `t` (index into GEOMETRIC_TRANSFORMS) of an HxWxC image.

  Returns a view when possible (no copy); see the module docstring for the
  convention.
  """
  if not 0 <= t < len(GEOMETRIC_TRANSFORMS):
    raise ValueError(f"geometric transform {t} out of range "
                     f"[0, {len(GEOMETRIC_TRANSFORMS)}).")
  out = np.rot90(image, t // 2, axes=(0, 1))
  return out[:, ::-1] if t % 2 else out


def dist_aug_transforms(name: str) -> tuple[int, ...]:
  """Transform ids of a `dist_aug` name: none, rot90, hflip, rot90+hflip,
  first<n> (the first n of GEOMETRIC_TRANSFORMS, n in 1..8; Fig. 7)."""
  if name in DIST_AUG:
    return DIST_AUG[name]
  if name.startswith("first") and name[5:].isdigit():
    n = int(name[5:])
    if 1 <= n <= len(GEOMETRIC_TRANSFORMS):
      return tuple(range(n))
  raise ValueError(f"unknown dist_aug {name!r}; use one of "
                   f"{sorted(DIST_AUG)} or first1..first8.")
