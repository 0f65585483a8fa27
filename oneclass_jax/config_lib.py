"""Config helpers shared by `configs/*.py` and the binaries.

Durations: `total_epochs` or `total_steps`; a positive `total_steps` wins, so
`--config.total_steps=100` alone shortens any config. `num_train_steps` is the
one place where they become steps, so schedules, checkpoints and logs never
disagree about what an epoch is.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import ml_collections


def class_id_or_name(value: str) -> int | str:
  """'3' -> 3, 'good' -> 'good': a class by id or by (label folder) name."""
  return int(value) if value.isdigit() else value


def parse_arg(arg: str | None,
              parsers: Mapping[str, Callable[[str], Any]] | None = None,
              **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config variant string 'k1=v1,k2=v2,flag' against typed defaults.

  Like big_vision's `parse_arg`: each value is cast to the type of its
  default, a bare key sets a bool default to True, and an unknown key fails.
  `parsers` maps the keys whose values are not of one type to the function
  that reads them (`inlier_class`: `class_id_or_name`).
  """
  parsers = parsers or {}
  result = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return result
  for item in arg.split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; "
                       f"known: {sorted(defaults)}.")
    default = defaults[key]
    if not _:
      if not isinstance(default, bool):
        raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
      result[key] = True
    elif key in parsers:
      # Replaced, not assigned: the ConfigDict field keeps the default's type.
      del result[key]
      result[key] = parsers[key](value)
    elif isinstance(default, bool):
      result[key] = value.lower() in ("1", "true", "yes")
    else:
      result[key] = type(default)(value)
  return result


def parse_ints(spec: str) -> list[int]:
  """'0-9', '0,3,5' or '0-2,7' -> [0, ..., 9], [0, 3, 5], [0, 1, 2, 7].

  Used for the lists of inlier classes and seeds of a multi-model run.

  Raises:
    ValueError: an empty list, a malformed item, a descending range or a
      repeated value.
  """
  values = []
  for item in str(spec).replace(" ", "").split(","):
    lo, dash, hi = item.partition("-")
    try:
      first, last = int(lo), int(hi if dash else lo)
    except ValueError:
      raise ValueError(f"Bad item {item!r} in {spec!r}: write integers and "
                       "ranges such as '0-9' or '0,3,5'.") from None
    if last < first:
      raise ValueError(f"Descending range {item!r} in {spec!r}.")
    values.extend(range(first, last + 1))
  if len(set(values)) != len(values):
    raise ValueError(f"{spec!r} lists a value twice.")
  return values


def num_train_steps(config: ml_collections.ConfigDict,
                    steps_per_epoch: int) -> int:
  """Total optimizer steps: `total_steps` if > 0, else `total_epochs`."""
  epochs, steps = config.get("total_epochs", -1), config.get("total_steps", -1)
  if epochs <= 0 and steps <= 0:
    raise ValueError("Set config.total_epochs or config.total_steps > 0 "
                     f"(got {epochs} and {steps}).")
  if steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}.")
  if steps > 0:
    return int(steps)
  return int(round(epochs * steps_per_epoch))


# Fields that may change between a run and its resumption: they steer logging,
# checkpointing and evaluation, never what is trained.
RESUMABLE_FIELDS = ("log_every_steps", "checkpoint_every_steps",
                    "keep_checkpoints", "eval", "max_steps_this_run")


def config_diff(saved: dict, current: dict,
                ignore: tuple[str, ...] = RESUMABLE_FIELDS) -> list[str]:
  """Dotted names of the fields that differ between two config dicts."""
  out = []

  def walk(a, b, prefix):
    for key in sorted(set(a) | set(b)):
      name = f"{prefix}{key}"
      if not prefix and key in ignore:
        continue
      va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
      if isinstance(va, dict) and isinstance(vb, dict):
        walk(va, vb, name + ".")
      elif _normalise(va) != _normalise(vb):
        out.append(f"{name}: {va!r} -> {vb!r}")

  walk(saved, current, "")
  return out


def _normalise(value):
  return json.loads(json.dumps(value)) if not isinstance(value, str) else value


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """JSON-safe plain dict (tuples become lists) of a ConfigDict."""
  return json.loads(config.to_json())


def base_config(arg) -> ml_collections.ConfigDict:
  """The paper's settings (Appendix A.4) shared by every method's config.

  `arg` is the parsed variant (`dataset`, `inlier_class`, `seed`, `runlocal`).
  Each `configs/<method>.py` starts from this and sets what differs.
  """
  c = ml_collections.ConfigDict()
  c.method = ""
  c.method_label = ""  # Name in results/report; '' = the method's name.
  c.seed = arg.seed
  c.data = ml_collections.ConfigDict(dict(
      name=arg.dataset,
      # A class id or a label-folder name (image_folder): typed `object` so
      # that `--config.data.inlier_class=good` overrides it as well as `=3`
      # (ml_collections reads an object field as a Python literal, else as
      # a string; an int field would refuse the name).
      inlier_class=ml_collections.FieldReference(arg.inlier_class,
                                                 field_type=object),
      data_dir="",       # tfds data dir ('' = $TFDS_DATA_DIR or default).
      source_dir="",     # local source (IDX files, image folder); '' = auto.
      seed=arg.seed,
      validation=False,  # Hold out 10% inliers + as many outliers (A.4).
      contamination=0.0,  # Outlier ratio in the training set (Section 5.3).
      fit_cap=0,         # Max inliers to fit the detector (0 = all).
      train_cap=0,       # Max inliers to train f (0 = all; Figure 9).
      dist_aug="none",   # Distribution augmentation (Section 3.1.3).
      # Several models in one program (oneclass_jax.trainer.multi): lists such as
      # '0-9' or '0,3,5' ('' = just inlier_class / dist_aug).
      inlier_classes="",
      dist_augs="",      # Comma-separated dist_aug names.
  ))
  c.augment = ml_collections.ConfigDict(dict(
      crop_min_scale=0.5, flip=True, jitter_strength=(0.4, 0.4, 0.4, 0.4),
      gray_prob=0.2, blur_prob=0.5,
      authors_code=False,  # True: no blur, frozen jitter order, no clipping.
  ))
  size = 64 if arg.dataset in ("cats_vs_dogs", "celeba_eyeglasses") else 32
  c.model = ml_collections.ConfigDict(dict(
      backbone="resnet18", width=1.0, stem_width=64,
      head_depth=8, head_width=512, head_out_dim=128, head_out_bias=False,
      image_size=size, dtype="float32",
      cross_replica_bn=False,  # False: per-device BN, as on their replicas.
  ))
  c.contrastive = ml_collections.ConfigDict(dict(temperature=0.2,
                                                 symmetric=False))
  c.denoising = ml_collections.ConfigDict(dict(noise_std=0.1))
  c.optim = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=0.01, momentum=0.9, nesterov=False,
      weight_decay=3e-4, decay_batchnorm=True, schedule="cosine",
      schedule_granularity="epoch", min_learning_rate_ratio=0.0))
  c.batch_size = 32
  c.total_epochs = 2048
  c.total_steps = -1
  c.max_steps_this_run = -1  # > 0: stop early (resumable), no final eval.
  c.num_devices = 0          # 0 = all devices of all hosts.
  c.seeds = ""               # Several seeds at once: '0-4' ('' = seed).
  c.num_model_shards = 1     # Devices along the model axis (trainer/multi.py).
  c.model_batching = "auto"  # trainer/multi.py: vmap, sequential, auto (CPU: seq.).
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval = ml_collections.ConfigDict(dict(
      detectors=("kde", "ocsvm", "ocsvm_linear", "gde", "knn"),
      embedding="f",      # 'f' (pooled, the paper's) or 'g' (head output).
      batch_size=256,
      baselines=False,    # Also score raw pixels and an untrained network.
  ))
  if arg.runlocal:
    c.model.width, c.model.stem_width = 0.125, 8
    c.model.head_width = 64
    c.batch_size = 32
    c.total_epochs, c.total_steps = -1, 20
    c.log_every_steps = c.checkpoint_every_steps = 10
  return c


def variant(arg, **extra):
  """parse_arg with the variant keys every config accepts."""
  return parse_arg(arg, {"inlier_class": class_id_or_name},
                   dataset="cifar10", inlier_class=0, seed=0, runlocal=False,
                   **extra)
