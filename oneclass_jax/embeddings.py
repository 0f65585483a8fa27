"""Embeddings of a trained network: f (pooled), g∘f (head) and rotation logits.

The one inference path of the evaluators, `score` and `explain`: batches are
sharded over the data mesh, every host reads its part, the outputs are
gathered in source order. `cached_embeddings` keeps them beside the
checkpoint with the identity of what made them.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from oneclass_jax import files
from oneclass_jax import parallel
from oneclass_jax import progress
from oneclass_jax import provenance
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.data import augment
from oneclass_jax.data import pipeline

# Which model output each embedding is: f = pooled representation (the
# paper's), g = head output.
EMBEDDING_KEYS = {"f": "pools", "g": "embeds"}


def embed(model, variables, images, *, logits: bool = False) -> dict:
  """f ('pools') and g∘f ('embeds'), float32, of a uint8 [b, H, W, C] batch.

  The one preprocessing and forward pass of inference: the evaluators'
  sharded extraction and the exported scorer (`export.py`) both go through
  it, so an exported model sees images exactly as the evaluation did.
  `logits=True` adds the rotation classifier's logits from the same pass.
  """
  out = model.apply(variables, augment.to_float(images), train=False)
  keys = ("pools", "embeds") + (("logits",) if logits else ())
  return {key: out[key].astype(jnp.float32) for key in keys}


def make_embed_fn(model, mesh, *, rotations: bool):
  """jit(shard_map) that maps a padded uint8 batch to f, g∘f (and logits)."""

  def per_device(variables, images):
    if not rotations:
      return embed(model, variables, images)
    # The rotation classifier's view of rot90(x, k) for k = 0..3 (Table 1),
    # computed per image before any gathering (the authors' multi-GPU
    # evaluation mixed views across replicas). The four views go through the
    # network as ONE batch (inference BatchNorm uses running statistics, so
    # rows do not interact): one larger forward pass instead of four, and
    # f and g come from the k = 0 view instead of a fifth pass.
    b = images.shape[0]
    views = jnp.concatenate([jnp.rot90(images, k, axes=(1, 2))
                             for k in range(4)])
    out = embed(model, variables, views, logits=True)
    result = {key: out[key][:b] for key in ("pools", "embeds")}
    # [4 * b, classes] -> [b, 4 views, classes].
    result["rot_logits"] = jnp.swapaxes(
        out["logits"].reshape(4, b, -1), 0, 1)
    return result

  return jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P(), P(parallel.AXIS)),
                               out_specs=P(parallel.AXIS)))


def extract(model, variables, source, mesh, *, batch_size: int,
            rotations: bool = False) -> dict:
  """Embeddings of every record of `source`, in source order, no padding.

  Each host reads a contiguous part of the source in padded batches (masked
  rows); outputs are gathered from all hosts and the real rows are put back
  in source order, so nothing is lost or duplicated whatever the batch,
  device and host count. `rot_logits` is [4 views, N, 4 classes].
  """
  n_dev, hosts = mesh.devices.size, jax.process_count()
  local_batch = max(n_dev, batch_size // n_dev * n_dev) // hosts
  embed = make_embed_fn(model, mesh, rotations=rotations)
  variables = parallel.replicate(variables, mesh)
  outputs, masks = [], []
  counter = progress.Counter(f"Embedding {len(source)} images"
                             f"{' (4 rotations each)' if rotations else ''}",
                             len(source) // hosts)
  with jax.set_mesh(mesh):
    for batch in pipeline.inference_batches(source, batch_size=local_batch):
      images = parallel.to_global({"image": batch["image"]}, mesh)["image"]
      gathered = multihost_utils.process_allgather(
          {"out": embed(variables, images), "mask": batch["_mask"]},
          tiled=True)
      # [hosts * local, ...] -> [hosts, local, ...]: host parts side by side.
      split = jax.tree.map(
          lambda x: np.asarray(x).reshape(hosts, local_batch, *x.shape[1:]),
          gathered)
      outputs.append(split["out"])
      masks.append(split["mask"])
      counter.update(int(np.sum(batch["_mask"])))
  counter.finish()
  # [batches, hosts, local] -> [hosts, batches, local]: host 0's part first,
  # which is the source order.
  mask = np.swapaxes(np.stack(masks), 0, 1)
  result = {}
  for key in outputs[0]:
    stacked = np.swapaxes(np.stack([o[key] for o in outputs]), 0, 1)
    result[key] = pipeline.unpad([stacked], [mask])
  if "rot_logits" in result:
    result["rot_logits"] = np.swapaxes(result["rot_logits"], 0, 1)
  if len(result["pools"]) != len(source):
    raise RuntimeError(f"Extracted {len(result['pools'])} rows for "
                       f"{len(source)} records.")
  return result


def cached_embeddings(workdir, ident: dict, compute, *, need_rotations):
  """(fit, test) embeddings of a checkpoint, from `embeddings/` if there.

  The cache holds f and g∘f (and the rotation logits when they were asked
  for) with the identity (`provenance.identity`) of the weights, config and
  data that made them, so re-scoring with other detectors or the other
  embedding does not run the network again, and a cache made by anything
  else (a retrained workdir, an edited image folder) is rebuilt.
  """
  path = files.path(workdir) / workdir_lib.EMBEDDINGS / f"step_{ident['step']}.npz"
  if path.exists():
    arrays = files.load_npz(path)
    saved = (json.loads(str(arrays.pop("identity")))
             if "identity" in arrays else None)
    stale = provenance.differences(saved, ident)
    if stale:
      logging.info("Embedding cache %s is stale (%s differ); recomputing.",
                   path, ", ".join(stale))
    elif not need_rotations or "test/rot_logits" in arrays:
      split = lambda p: {k.split("/", 1)[1]: v for k, v in arrays.items()
                         if k.startswith(p + "/")}
      return split("fit"), split("test")
  fit_emb, test_emb = compute()
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {**{f"fit/{k}": v for k, v in fit_emb.items()},
              **{f"test/{k}": v for k, v in test_emb.items()}}
    files.write_atomic(path, files.npz_bytes(
        identity=np.asarray(json.dumps(ident, sort_keys=True)), **arrays))
  return fit_emb, test_emb


def labels_of(source) -> np.ndarray:
  return np.asarray([source[i]["label"] for i in range(len(source))])
