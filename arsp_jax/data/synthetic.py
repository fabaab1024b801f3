"""Procedurally generated, class-structured images: a dataset that is always available."""

from __future__ import annotations

import numpy as np

from arsp_jax.data.dataset import TAG_SYNTHETIC, ArraySource, seeded_rng
from arsp_jax.errors import DataError

#: The options ``load_dataset("synthetic", ...)`` takes.
SYNTHETIC_OPTIONS = ("image_shape", "num_classes", "num_train", "num_test")
_SYNTHETIC_MAX_BYTES = 4 << 30

# ----------------------------------------------------------------------------
# Synthetic.
# ----------------------------------------------------------------------------


def make_synthetic(
  image_shape: tuple, num_classes: int, num_train: int, num_test: int, seed: int
) -> ArraySource:
  """Generates a class-structured image classification problem.

  Each class k has a fixed random smooth prototype: a sum of low-frequency
  2-D cosines per channel (random amplitudes decaying with frequency, random
  phases). An example of class k is the prototype evaluated on a randomly
  scaled (0.8-1.25x) and shifted (up to 1/8 of the image) grid, times a
  random amplitude (0.7-1.3), plus a distractor (the prototype of another
  class, own scale / shift, amplitude 0.3-0.6) plus Gaussian pixel noise
  (std 1.2; prototypes have unit RMS). Learnable, but not separable by a
  linear model. Deterministic from ``seed``.

  Returns:
    an ArraySource with float32 images [N,H,W,C].
  """
  if len(image_shape) != 3 or min(image_shape) < 1:
    raise DataError(
      f"synthetic image_shape must be (H, W, C) with positive sizes, got {image_shape}."
    )
  if num_classes < 2 or num_train < 1 or num_test < 1:
    raise DataError(
      "synthetic needs num_classes >= 2, num_train >= 1 and num_test >= 1, got "
      f"num_classes={num_classes}, num_train={num_train}, num_test={num_test}."
    )
  h, w, c = (int(d) for d in image_shape)
  nbytes = (num_train + num_test) * h * w * c * 4
  if nbytes > _SYNTHETIC_MAX_BYTES:
    raise DataError(
      f"synthetic data of shape {image_shape} with {num_train + num_test} examples would "
      f"need {nbytes / 2**30:.1f} GiB of memory; reduce num_train / num_test or image_shape."
    )

  rng = seeded_rng(seed, TAG_SYNTHETIC)
  z, fy, fx = _prototypes(rng, num_classes, c, h, w)
  train_images, train_labels = _make_split(rng, z, num_train, (h, w, c), fy, fx)
  test_images, test_labels = _make_split(rng, z, num_test, (h, w, c), fy, fx)
  return ArraySource(
    images={"train": train_images, "test": test_images},
    labels={"train": train_labels, "test": test_labels},
    num_classes=num_classes,
  )


def _prototypes(rng: np.random.Generator, num_classes: int, c: int, h: int, w: int):
  """(complex coefficients [K,C,Fy,Fx] of unit-RMS class prototypes, fy, fx)."""
  freq = 4  # vertical frequencies 0..3, horizontal -3..3 (cycles per image)
  fy = np.arange(freq)
  fx = np.arange(-(freq - 1), freq)
  decay = 1.0 / (1.0 + fy[:, None] ** 2 + fx[None, :] ** 2)
  coeff = rng.normal(size=(num_classes, c, freq, 2 * freq - 1)) * decay
  coeff[:, :, 0, :freq] = 0.0  # no constant term; drop duplicated (0, -b) terms
  z = coeff * np.exp(1j * rng.uniform(0, 2 * np.pi, size=coeff.shape))  # [K,C,Fy,Fx]
  # Normalise every prototype to unit RMS over its (un-shifted) grid.
  protos = _render(
    z,
    np.arange(num_classes),
    np.ones(num_classes),
    np.zeros(num_classes),
    np.zeros(num_classes),
    h,
    w,
    fy,
    fx,
  )
  return z / np.sqrt(np.mean(protos**2, axis=(1, 2, 3)))[:, None, None, None], fy, fx


def _make_split(
  rng: np.random.Generator, z: np.ndarray, n: int, shape: tuple, fy: np.ndarray, fx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """``n`` examples: (float32 images [n,H,W,C] read-only, int32 labels [n])."""
  num_classes = z.shape[0]
  h, w, c = shape
  labels = rng.integers(num_classes, size=n)
  other = (labels + rng.integers(1, num_classes, size=n)) % num_classes
  images = np.empty((n, h, w, c), np.float32)
  for start in range(0, n, 1024):
    sl = slice(start, min(start + 1024, n))
    m = sl.stop - sl.start
    main = _render_random(rng, z, labels[sl], shape, fy, fx)
    distractor = _render_random(rng, z, other[sl], shape, fy, fx)
    x = (
      main * rng.uniform(0.7, 1.3, (m, 1, 1, 1))
      + distractor * rng.uniform(0.3, 0.6, (m, 1, 1, 1))
      + rng.normal(0.0, 1.2, (m, h, w, c))
    )
    images[sl] = x
  images.flags.writeable = False
  return images, labels.astype(np.int32)


def _render_random(rng, z, classes, shape, fy, fx) -> np.ndarray:
  """``_render`` of ``classes`` at random scales (0.8-1.25) and shifts (up to 1/8 image)."""
  m = len(classes)
  scale = rng.uniform(0.8, 1.25, m)
  shift_y = rng.uniform(-0.125, 0.125, m)
  shift_x = rng.uniform(-0.125, 0.125, m)
  return _render(z, classes, scale, shift_y, shift_x, shape[0], shape[1], fy, fx)


def _render(
  z: np.ndarray,
  classes: np.ndarray,
  scale: np.ndarray,
  shift_y: np.ndarray,
  shift_x: np.ndarray,
  h: int,
  w: int,
  fy: np.ndarray,
  fx: np.ndarray,
) -> np.ndarray:
  """Evaluates class patterns on per-example scaled / shifted grids.

  pattern(y, x) = Re sum_{a,b} z[k,c,a,b] exp(2 pi i (fy_a y' + fx_b x')),
  y' = (y - 1/2) / scale + 1/2 + shift_y (coordinates in image units).

  Args:
    z: complex [K,C,Fy,Fx] coefficients; classes/scale/shift_*: [M].
  Returns:
    float64 [M,H,W,C].
  """
  y = (np.arange(h) + 0.5) / h - 0.5
  x = (np.arange(w) + 0.5) / w - 0.5
  yy = y[None, :] / scale[:, None] + 0.5 + shift_y[:, None]  # [M,H]
  xx = x[None, :] / scale[:, None] + 0.5 + shift_x[:, None]  # [M,W]
  ey = np.exp(2j * np.pi * fy[None, :, None] * yy[:, None, :])  # [M,Fy,H]
  ex = np.exp(2j * np.pi * fx[None, :, None] * xx[:, None, :])  # [M,Fx,W]
  rows = np.swapaxes(z[classes], 2, 3) @ ey[:, None]  # [M,C,Fx,H]
  rows = np.swapaxes(rows, 2, 3)  # [M,C,H,Fx]
  out = rows.real @ ex.real[:, None] - rows.imag @ ex.imag[:, None]  # [M,C,H,W]
  return out.transpose(0, 2, 3, 1)
