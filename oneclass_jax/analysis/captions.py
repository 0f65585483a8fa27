"""Scale captions for the analysis figures: what was trained, how big.

Every analysis figure states the scale it was made at (dataset, network,
training length, seeds), read from the runs' own saved configs, so a
CPU-scale figure can never pass for a paper-scale one.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from oneclass_jax.data import geometric

_DATASETS = {
    "cifar10": "CIFAR-10", "cifar20": "CIFAR-20", "cifar100": "CIFAR-100",
    "fashion_mnist": "Fashion-MNIST", "mnist": "MNIST",
    "cats_vs_dogs": "Cats-vs-Dogs", "celeba_eyeglasses": "CelebA eyeglasses",
    "image_folder": "image folder", "mvtec": "MVTec AD",
}


def dataset_label(data: Mapping[str, Any]) -> str:
  """A dataset's name for figures; CIFAR-10 read from a JPEG folder says so."""
  name = data.get("name", "?")
  label = _DATASETS.get(name, name)
  source = str(data.get("source_dir") or "")
  if name == "cifar10" and source:
    label += " (JPEG copy)" if "jpeg" in source.lower() else " (folder copy)"
  return label


def model_label(config: Mapping[str, Any]) -> str:
  """The paper's name of a run's representation (Table 7 rows)."""
  method = config["method"]
  if method == "rotation":
    return "RotNet" if config["model"]["head_depth"] == 0 else "Rotation"
  return {"contrastive": "Contrastive", "contrastive_da": "Contrastive (DA)",
          "denoising": "DAE"}.get(method, method)


def _duration(config: Mapping[str, Any]) -> str:
  steps = config.get("total_steps", -1)
  if steps and steps > 0:
    return f"{steps} steps"
  return f"{config.get('total_epochs')} epochs"


def network_label(model: Mapping[str, Any]) -> str:
  backbone = str(model.get("backbone", "?")).replace("resnet", "ResNet-")
  width = model.get("width", 1.0)
  return backbone if width == 1.0 else f"{backbone} ×{width:g}"


def scale_note(configs: Sequence[Mapping[str, Any]]) -> str:
  """One line: dataset, classes, network, durations, batch sizes, seeds."""
  if not configs:
    return "no runs"
  datasets = sorted({dataset_label(c["data"]) for c in configs})
  classes = sorted({str(c["data"]["inlier_class"]) for c in configs})
  nets = sorted({network_label(c["model"]) for c in configs})
  durations = sorted({_duration(c) for c in configs},
                     key=lambda s: (len(s), s))
  batches = sorted({int(c["batch_size"]) for c in configs})
  seeds = sorted({int(c["seed"]) for c in configs})
  parts = [
      ", ".join(datasets),
      f"class{'es' if len(classes) > 1 else ''} {','.join(classes)}",
      ", ".join(nets),
      "/".join(durations) if len(durations) <= 3 else
      f"{durations[0]} … {durations[-1]}",
      f"batch {','.join(map(str, batches))}",
      f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}",
  ]
  return " · ".join(parts)


def set_label(dist_aug: str) -> str:
  """'first3' -> '+hflip, +rot90': the distributions added to the original."""
  ids = geometric.dist_aug_transforms(dist_aug)
  names = [geometric.GEOMETRIC_TRANSFORMS[t] for t in ids if t]
  if not names:
    return "original only"
  return ", ".join("+" + n.replace("+", ",") for n in names)
