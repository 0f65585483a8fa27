"""Patch geometry, Gaussian upsampling, memory banks and MVTec patch sources.

References are independent float64 NumPy loops (or brute force), never the
code under test.
"""
import itertools

import jax
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from oneclass_jax.mvtec import data as mvtec_data
from oneclass_jax.evaluators import mvtec_patches
from oneclass_jax.mvtec import localize
from oneclass_jax.mvtec import memory_bank
from oneclass_jax.mvtec import patches


# ---------------------------------------------------------------------------
# Grid geometry and extraction.


def test_paper_grid_is_57():
  assert patches.grid_size(256, 32, 4) == 57
  assert patches.grid_shape(256, 256, 32, 4) == (57, 57)
  assert patches.covered_size(57, 32, 4) == 256


@pytest.mark.parametrize("size,patch,stride", [
    (256, 32, 4), (256, 32, 8), (256, 32, 16), (256, 32, 7), (70, 16, 4),
    (33, 32, 4), (32, 32, 5), (9, 3, 1), (100, 1, 3)])
def test_grid_formula_counts_every_fitting_window(size, patch, stride):
  # Brute force: every corner 0, s, 2s, ... whose window stays inside.
  corners = [c for c in range(0, size, stride) if c + patch <= size]
  assert patches.grid_size(size, patch, stride) == len(corners)
  np.testing.assert_array_equal(patches.grid_offsets(size, patch, stride),
                                corners)


def test_geometry_errors():
  with pytest.raises(ValueError, match="smaller than one 32x32 patch"):
    patches.grid_size(31, 32, 4)
  with pytest.raises(ValueError, match="stride must be >= 1"):
    patches.grid_size(256, 32, 0)
  with pytest.raises(ValueError, match="smaller than one 32x32 patch"):
    patches.extract_patches(np.zeros((1, 20, 40, 3), np.uint8), 32, 4)
  with pytest.raises(ValueError, match=r"batch \[N, H, W, C\]"):
    patches.extract_patches(np.zeros((40, 40, 3), np.uint8), 32, 4)


def test_extract_patches_matches_slicing():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 23, 19, 3), dtype=np.uint8)
  patch, stride = 5, 3
  out = patches.extract_patches(images, patch, stride)
  gh, gw = (23 - 5) // 3 + 1, (19 - 5) // 3 + 1
  assert out.shape == (3, gh, gw, patch, patch, 3)
  for n, i, j in itertools.product(range(3), range(gh), range(gw)):
    np.testing.assert_array_equal(
        out[n, i, j], images[n, 3 * i:3 * i + 5, 3 * j:3 * j + 5])
  # Chunks, flattened image-major, give the same rows in the same order.
  flat = np.concatenate([c for _, c in patches.iter_patch_chunks(
      images, patch, stride, images_per_chunk=2)])
  np.testing.assert_array_equal(flat, out.reshape(-1, patch, patch, 3))
  # The dense source numbers patches the same way.
  source = mvtec_data.DensePatchSource(images, patch, stride)
  assert len(source) == len(flat) and source.grid == (gh, gw)
  picks = rng.permutation(len(flat))[:17]
  np.testing.assert_array_equal(source.patches(picks), flat[picks])
  np.testing.assert_array_equal(source[int(picks[0])]["image"],
                                flat[picks[0]])


# ---------------------------------------------------------------------------
# Gaussian transposed-convolution upsampling.


def _reference_upsample(grid, size, patch, stride, sigma, normalize):
  """Direct 2-D transposed convolution in float64, plus edge extension."""
  c = (patch - 1) / 2
  u, v = np.meshgrid(np.arange(patch), np.arange(patch), indexing="ij")
  kernel = np.exp(-((u - c) ** 2 + (v - c) ** 2) / (2 * sigma ** 2))
  gh, gw = grid.shape
  hc, wc = (gh - 1) * stride + patch, (gw - 1) * stride + patch
  total, weight = np.zeros((hc, wc)), np.zeros((hc, wc))
  for i in range(gh):
    for j in range(gw):
      window = (slice(i * stride, i * stride + patch),
                slice(j * stride, j * stride + patch))
      total[window] += grid[i, j] * kernel
      weight[window] += kernel
  out = total / weight if normalize else total
  return np.pad(out, ((0, size[0] - hc), (0, size[1] - wc)), mode="edge")


@pytest.mark.parametrize("size,patch,stride,sigma", [
    ((64, 64), 16, 4, 4.0), ((70, 61), 16, 4, 10.0), ((48, 48), 8, 8, 2.5)])
@pytest.mark.parametrize("normalize", [True, False])
def test_upsample_matches_direct_transposed_conv(size, patch, stride, sigma,
                                                 normalize):
  rng = np.random.default_rng(1)
  gh, gw = patches.grid_shape(*size, patch, stride)
  grids = rng.normal(size=(3, gh, gw))
  got = localize.upsample(grids, size, patch, stride, sigma=sigma,
                          normalize=normalize, chunk=2)
  assert got.shape == (3,) + size and got.dtype == np.float32
  for g, m in zip(grids, got):
    ref = _reference_upsample(g, size, patch, stride, sigma, normalize)
    np.testing.assert_allclose(m, ref, rtol=1e-5, atol=1e-5)


def test_upsample_paper_geometry_and_constant_grid():
  rng = np.random.default_rng(2)
  grid = rng.normal(size=(1, 57, 57))
  got = localize.upsample(grid, (256, 256), 32, 4)
  ref = _reference_upsample(grid[0], (256, 256), 32, 4,
                            localize.DEFAULT_SIGMA, True)
  np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)
  # Normalised: a constant score grid gives a constant map, borders included.
  flat = localize.upsample(np.full((1, 57, 57), -3.5), (256, 256), 32, 4)
  np.testing.assert_allclose(flat, -3.5, rtol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_single_hot_patch_lands_on_its_window(normalize):
  grid = np.zeros((1, 57, 57))
  i, j = 10, 41
  grid[0, i, j] = 1.0
  m = localize.upsample(grid, (256, 256), 32, 4, sigma=4.0,
                        normalize=normalize)[0]
  support = np.zeros((256, 256), bool)
  support[4 * i:4 * i + 32, 4 * j:4 * j + 32] = True
  assert (m[support] > 0).all() and (m[~support] == 0).all()
  ys, xs = np.nonzero(m)
  centre = (np.average(ys, weights=m[ys, xs]),
            np.average(xs, weights=m[ys, xs]))
  if not normalize:  # Peak and centre of mass at the patch centre.
    np.testing.assert_allclose(centre, (4 * i + 15.5, 4 * j + 15.5),
                               atol=1e-3)
    peak = np.argwhere(m == m.max())
    assert set(map(tuple, peak)) == {(4 * i + a, 4 * j + b)
                                     for a in (15, 16) for b in (15, 16)}
  else:  # Symmetric neighbours: still centred (interior patch).
    np.testing.assert_allclose(centre, (4 * i + 15.5, 4 * j + 15.5),
                               atol=1e-3)


def test_upsample_rejects_bad_input():
  with pytest.raises(ValueError, match="sigma must be > 0"):
    localize.upsample(np.zeros((1, 57, 57)), (256, 256), 32, 4, sigma=0)
  with pytest.raises(ValueError, match="spans 260 px"):
    localize.upsample(np.zeros((1, 58, 58)), (256, 256), 32, 4)
  with pytest.raises(ValueError, match="NaN or inf"):
    localize.upsample(np.full((1, 57, 57), np.nan), (256, 256), 32, 4)


# ---------------------------------------------------------------------------
# Memory banks.


def _reference_k_center(x, first, size):
  x = np.asarray(x, np.float64)
  chosen = [first]
  dist = np.linalg.norm(x - x[first], axis=1)
  for _ in range(size - 1):
    nxt = int(np.argmax(np.where(np.isin(np.arange(len(x)), chosen), -1,
                                 dist)))
    chosen.append(nxt)
    dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
  return np.array(chosen)


def _reference_radius(x, centres):
  d = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=-1)
  return d.min(axis=1).max()


def test_coreset_matches_float64_greedy():
  x = np.random.default_rng(3).normal(size=(300, 6))
  with jax.enable_x64(True):
    got = memory_bank.greedy_coreset(x, 25, seed=7)
  assert len(got) == 25 and len(set(got.tolist())) == 25
  np.testing.assert_array_equal(got, _reference_k_center(x, got[0], 25))


def test_coreset_size_and_degenerate_cases():
  x = np.random.default_rng(4).normal(size=(50, 16)).astype(np.float32)
  sel = memory_bank.greedy_coreset(x, 12, seed=0, projection_dim=4)
  assert len(sel) == 12 and len(set(sel.tolist())) == 12
  assert sel.min() >= 0 and sel.max() < 50
  np.testing.assert_array_equal(memory_bank.greedy_coreset(x, 80),
                                np.arange(50))
  # Duplicated rows: indices stay distinct even when distances are all 0.
  dup = np.repeat(x[:3], 5, axis=0)
  assert len(set(memory_bank.greedy_coreset(dup, 6).tolist())) == 6
  with pytest.raises(ValueError, match="size must be >= 1"):
    memory_bank.greedy_coreset(x, 0)
  with pytest.raises(ValueError, match="NaN or inf"):
    memory_bank.greedy_coreset(np.full((4, 2), np.nan), 2)


def test_random_subset():
  idx = memory_bank.random_subset(1000, 100, seed=5)
  assert len(idx) == 100 and len(np.unique(idx)) == 100
  assert np.all(np.diff(idx) > 0) and idx.max() < 1000
  np.testing.assert_array_equal(idx, memory_bank.random_subset(1000, 100, 5))
  np.testing.assert_array_equal(memory_bank.random_subset(7, 100, 5),
                                np.arange(7))


def test_coverage_radius_matches_brute_force():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(203, 5))
  centres = x[rng.permutation(203)[:11]]
  got = memory_bank.coverage_radius(x, centres, block=64)
  assert got == pytest.approx(_reference_radius(x, centres), rel=1e-5)


def test_coreset_is_within_twice_the_optimal_radius():
  x = np.random.default_rng(8).normal(size=(12, 3))
  best = min(_reference_radius(x, x[list(c)])
             for c in itertools.combinations(range(12), 3))
  for seed in range(4):
    sel = memory_bank.greedy_coreset(x, 3, seed=seed)
    assert _reference_radius(x, x[sel]) <= 2 * best + 1e-6


def test_coreset_covers_clusters_better_than_random():
  # One big cluster and nine small far-away ones: random draws of 10 rows
  # land almost only in the big one, k-center visits every cluster.
  rng = np.random.default_rng(9)
  centres = rng.normal(size=(10, 8)) * 20
  sizes = [1500] + [4] * 9
  x = np.concatenate([c + rng.normal(size=(n, 8)) for c, n in
                      zip(centres, sizes)]).astype(np.float32)
  for seed in range(3):
    core = memory_bank.coverage_radius(
        x, x[memory_bank.greedy_coreset(x, 10, seed=seed)])
    rand = memory_bank.coverage_radius(
        x, x[memory_bank.random_subset(len(x), 10, seed)])
    assert core < 0.5 * rand


# ---------------------------------------------------------------------------
# Training crops, metrics per defect type, heatmap choice.


def test_train_crops_are_deterministic_slices():
  rng = np.random.default_rng(10)
  images = rng.integers(0, 256, (4, 40, 36, 3), dtype=np.uint8)
  source = mvtec_data.PatchTrainSource(images, 8, 3, seed=1,
                                       transforms=(0, 2))
  assert len(source) == 4 * 3 * 2
  again = mvtec_data.PatchTrainSource(images, 8, 5, seed=1)
  np.testing.assert_array_equal(again.corners[:12], source.corners)
  other = mvtec_data.PatchTrainSource(images, 8, 3, seed=2)
  assert not np.array_equal(other.corners, source.corners)
  assert source.corners[:, 0].max() <= 32 and source.corners[:, 1].max() <= 28
  for i in range(len(source)):
    record = source[i]
    t, j = divmod(i, 12)
    top, left = source.corners[j]
    crop = images[j // 3, top:top + 8, left:left + 8]
    expected = np.rot90(crop) if t else crop
    np.testing.assert_array_equal(record["image"], expected)
    assert record["label"] == 0 and record["index"] == i
  with pytest.raises(IndexError):
    source[len(source)]


def test_detection_metrics_per_defect_against_sklearn():
  rng = np.random.default_rng(11)
  types = np.array(["good"] * 5 + ["crack"] * 3 + ["fray"] * 2)
  labels = (types != "good").astype(int)
  masks = np.zeros((10, 12, 12), bool)
  for n in range(5, 10):
    r, c = rng.integers(0, 8, 2)
    masks[n, r:r + 4, c:c + 3] = True
  maps = rng.normal(size=masks.shape) + 1.5 * masks
  scores = maps.reshape(10, -1).max(axis=1)
  out = mvtec_patches.detection_metrics(labels, types, scores, masks, maps)
  for defect, rows in (("crack", slice(0, 8)),
                       ("fray", np.r_[0:5, 8:10])):
    got = out["per_defect"][defect]
    assert got["image_kde"] == pytest.approx(
        sk_metrics.roc_auc_score(labels[rows], scores[rows]))
    assert got["pixel_kde"] == pytest.approx(sk_metrics.roc_auc_score(
        masks[rows].ravel(), maps[rows].ravel()))
    assert 0 <= got["aupro_kde"] <= 1
  assert out["per_defect"]["crack"]["images"] == 3
  assert out["overall"]["pixel_kde"] == pytest.approx(
      sk_metrics.roc_auc_score(masks.ravel(), maps.ravel()))


def test_heatmap_indices_take_turns_over_defect_types():
  types = ["good", "good", "crack", "fray", "crack", "fray", "crack"]
  assert mvtec_patches.heatmap_indices(types, 5) == [2, 3, 0, 4, 5]
  assert mvtec_patches.heatmap_indices(types, 0) == []
  assert sorted(mvtec_patches.heatmap_indices(types, 99)) == list(range(7))
