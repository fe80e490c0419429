"""BYOL-style image augmentation, entirely on device: pure jax, jit-able, vmapped per example.

One view of one example is `augment_view(image_u8 [H,W,C], key, cfg, view, out_size)`:

  random resized crop (+ bilinear resize, one `jax.image.scale_and_translate`) -> horizontal flip
  -> colour jitter (brightness, contrast, saturation, hue in random order, with probability)
  -> grayscale -> Gaussian blur -> solarize -> clip to [0, 1].

This follows the official BYOL code (DeepMind's deepmind-research byol/utils/augmentations.py), except that the crop also
runs on device (BYOL crops on the host with tf.data) and the blur pads by reflection (BYOL pads with
zeros, which darkens the border; torchvision's GaussianBlur, used by the STL/CIFAR recipe, reflects).

Internally one view is processed in planar [C, H, W] layout (XLA:CPU handles a channels-last minor
axis of size 3 slowly), the colour jitter as a list of channel planes, and transposed back at the
end. What it costs is memory traffic: on an H100, per XLA's compiled program
(scripts/gpu/aot_estimate.py), the 'stl10' preset at 96 px moves 1.2 GB per batch of 256 (two views),
>= 0.37 ms. On a 2-core CPU, two views of 256 images (normalised, bf16) take about 7 ms (28x28x1,
'fashion_mnist') and 34 ms (32x32x3, 'cifar10'), plus 4-7 s of one-off compile time (mostly the
threefry hashes). `python -m byol_jax.bench --augment_ops` times it, and each op's share, on any device.

`two_views` derives each example's key from (seed, step, global example index, view) only, so the
views of an example do not depend on the batch position or the device it lands on.

Fields of an augmentation config (`augment_config(preset)`); "per view" fields are (view0, view1)
pairs, scalars are shared by both views:
  random_crop      bool; False -> the full image is resized (no crop randomness at all).
  crop_scale       (min, max) fraction of the image area kept by the crop.
  crop_ratio       (min, max) aspect ratio w/h of the crop, sampled log-uniformly.
  flip_prob        probability of a horizontal flip.
  jitter_prob      probability of applying colour jitter (the four ops together, random order).
  brightness       additive delta ~ U(-b, b) (BYOL's additive brightness).
  contrast         factor ~ U(1-c, 1+c) around the per-channel mean.
  saturation       HSV saturation factor ~ U(1-s, 1+s) (no-op for C == 1).
  hue              HSV hue shift ~ U(-h, h) (no-op for C == 1).
  grayscale_prob   probability of converting to grayscale (no-op for C == 1).
  blur_prob        per view, probability of a Gaussian blur.
  blur_sigma       (min, max), sigma ~ U(min, max) in output pixels.
  blur_kernel_frac kernel size = int(frac * out_size), made odd (224 -> 23 taps, 96 -> 9, 32 -> 3).
  solarize_prob    per view, probability of solarizing (x -> 1 - x where x >= 0.5).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

# Number of vectorised crop proposals before falling back to a centre crop (torchvision and TF's
# sample_distorted_bounding_box both use 10).
_CROP_ATTEMPTS = 10
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # as BYOL (ITU-R 601-2 luma)

_BYOL = dict(
    random_crop=True,
    crop_scale=(0.08, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    flip_prob=0.5,
    jitter_prob=0.8,
    brightness=0.4,
    contrast=0.4,
    saturation=0.2,
    hue=0.1,
    grayscale_prob=0.2,
    blur_prob=(1.0, 0.1),
    blur_sigma=(0.1, 2.0),
    blur_kernel_frac=0.1,
    solarize_prob=(0.0, 0.2),
)

PRESETS: dict[str, dict] = {
    # ImageNet recipe of the official BYOL code.
    'byol': dict(_BYOL),
    # DirectPred STL-10 recipe (the paper's Appendix C): RRC(96), flip, ColorJitter(0.8, 0.8, 0.8, 0.2)
    # p=0.8, grayscale p=0.2, blur always with a 9x9 kernel on 96 px (frac 0.1 -> 9 taps),
    # sigma ~ U(0.1, 2), no solarize. torchvision's RRC uses scale (0.08, 1).
    # Note: torchvision's brightness is multiplicative; here it is BYOL's additive delta.
    'stl10': dict(_BYOL, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                  blur_prob=(1.0, 1.0), solarize_prob=(0.0, 0.0)),
    # DirectPred CIFAR-10 recipe: RRC(32), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
    # grayscale p=0.2, no blur, no solarize.
    'cifar10': dict(_BYOL, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                    blur_prob=(0.0, 0.0), solarize_prob=(0.0, 0.0)),
    # Fashion-MNIST, 28x28 grayscale, centred objects filling most of the frame.
    # - crop_scale (0.25, 1): at 28 px BYOL's 8% crop is an 8x8 patch that often holds only
    #   background or a featureless bit of fabric; with no colour cues the crop is the main source
    #   of view diversity, so keep it strong but class-preserving.
    # - flip: garments are left/right symmetric; shoes all point one way, flipping them is a valid
    #   invariance for the class.
    # - jitter: only brightness/contrast exist for one channel; they (and solarize) stop the net
    #   from matching views by their intensity histogram, the grayscale analogue of the colour-
    #   histogram shortcut that colour jitter removes on RGB images. Kept at BYOL's 0.4 / p=0.8.
    # - blur: at 28 px the kernel is 3 taps and sigma up to 2 nearly averages neighbours, which
    #   erases the fine texture that separates e.g. shirt / T-shirt / pullover; so rare and mild
    #   (sigma <= 1), still asymmetric like BYOL.
    # - solarize as BYOL's views (0, 0.2): a cheap strong intensity remap for one view.
    'fashion_mnist': dict(_BYOL, crop_scale=(0.25, 1.0), saturation=0.0, hue=0.0,
                          grayscale_prob=0.0, blur_prob=(0.2, 0.1), blur_sigma=(0.1, 1.0),
                          solarize_prob=(0.0, 0.2)),
    # Identity: the full image resized to out_size, nothing random (equals `eval_view`).
    'none': dict(_BYOL, random_crop=False, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                 flip_prob=0.0, jitter_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                 hue=0.0, grayscale_prob=0.0, blur_prob=(0.0, 0.0), solarize_prob=(0.0, 0.0)),
}


def augment_config(preset: str) -> ml_collections.ConfigDict:
  """A fresh (mutable) ConfigDict with the fields of `PRESETS[preset]`."""
  if preset not in PRESETS:
    raise ValueError(f'unknown augmentation preset {preset!r}; choose one of {sorted(PRESETS)}')
  return ml_collections.ConfigDict(dict(PRESETS[preset]))


def _per_view(value: Any, view: int) -> float:
  """A per-view field may be a (view0, view1) pair or a scalar shared by both views."""
  if isinstance(value, (tuple, list)):
    return float(value[view])
  return float(value)


def _pair(value: Any) -> tuple[float, float]:
  lo, hi = value
  return float(lo), float(hi)


# ----------------------------------------------------------------------------- random numbers
#
# All the randomness of one view comes from ONE `jax.random.uniform(key, (_NUM_UNIFORMS,))` call:
# every threefry call site costs seconds of XLA compile time on CPU (measured: 8 call sites 3.8 s,
# 1 call site 0.6 s), and the draws are cheap to transform (log-uniform, Bernoulli, argsort for
# the jitter order).

_U_AREA = slice(0, _CROP_ATTEMPTS)
_U_RATIO = slice(_CROP_ATTEMPTS, 2 * _CROP_ATTEMPTS)
_U_X = slice(2 * _CROP_ATTEMPTS, 3 * _CROP_ATTEMPTS)
_U_Y = slice(3 * _CROP_ATTEMPTS, 4 * _CROP_ATTEMPTS)
_U_ORDER = slice(4 * _CROP_ATTEMPTS, 4 * _CROP_ATTEMPTS + 4)
(_U_FLIP, _U_JITTER, _U_BRIGHT, _U_CONTRAST, _U_SAT, _U_HUE, _U_GRAY, _U_BLUR, _U_SIGMA,
 _U_SOLARIZE) = range(4 * _CROP_ATTEMPTS + 4, 4 * _CROP_ATTEMPTS + 14)
_NUM_UNIFORMS = 4 * _CROP_ATTEMPTS + 14


def _lerp(u, lo, hi):
  return lo + (hi - lo) * u


# ----------------------------------------------------------------------------- crop + resize


def _sample_crop_box(u: jax.Array, height: int, width: int, scale: tuple[float, float],
                     ratio: tuple[float, float]) -> tuple[jax.Array, ...]:
  """BYOL/Inception crop: area ~ U(scale)*H*W, log-uniform aspect ratio, uniform position.

  Takes the first of `_CROP_ATTEMPTS` proposals that fits in the image, else a centre crop of the
  whole image clamped to the allowed aspect range (torchvision's fallback). Sizes are continuous
  (sub-pixel), which the resampling below handles. Returns (y0, x0, h, w) in input pixels.
  """
  area = height * width * _lerp(u[_U_AREA], scale[0], scale[1])
  r = jnp.exp(_lerp(u[_U_RATIO], math.log(ratio[0]), math.log(ratio[1])))
  w = jnp.sqrt(area * r)
  h = jnp.sqrt(area / r)
  fits = (w <= width) & (h <= height)
  x0 = u[_U_X] * jnp.maximum(width - w, 0.0)
  y0 = u[_U_Y] * jnp.maximum(height - h, 0.0)
  first = jnp.argmax(fits)
  # Fallback (static: depends on the image shape only).
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fw, fh = float(width), width / ratio[0]
  elif in_ratio > ratio[1]:
    fw, fh = height * ratio[1], float(height)
  else:
    fw, fh = float(width), float(height)
  fy0, fx0 = (height - fh) / 2, (width - fw) / 2
  ok = jnp.any(fits)
  pick = lambda v, fallback: jnp.where(ok, v[first], fallback)
  return pick(y0, fy0), pick(x0, fx0), pick(h, fh), pick(w, fw)


def _resize_box(image: jax.Array, y0, x0, h, w, out_size: int) -> jax.Array:
  """Crops the box (y0, x0, h, w) (input pixels, may be fractional) and resizes it to out_size^2.

  One fused `scale_and_translate`: output coordinate = input coordinate * scale + translation, with
  bilinear (triangle) weights, antialiased when downscaling. Planar layout: [C, H, W] -> [C, out, out].
  """
  sy = out_size / h
  sx = out_size / w
  scale = jnp.stack([jnp.asarray(sy, jnp.float32), jnp.asarray(sx, jnp.float32)])
  translation = jnp.stack([jnp.asarray(-y0 * sy, jnp.float32), jnp.asarray(-x0 * sx, jnp.float32)])
  return jax.image.scale_and_translate(
      image, (image.shape[0], out_size, out_size), spatial_dims=(1, 2), scale=scale,
      translation=translation, method='linear', antialias=True)


def _to_planar(image_u8: jax.Array) -> jax.Array:
  """uint8 [H, W, C] -> float32 [C, H, W] in [0, 1]. The augmentation works on channel planes:
  XLA:CPU handles a minor axis of size 3 (channels last) slowly."""
  return jnp.moveaxis(image_u8, -1, 0).astype(jnp.float32) / 255.0


def _full_image(image_u8: jax.Array, out_size: int) -> jax.Array:
  """The whole image resized to out_size^2, float32 [C, out, out] in [0, 1] (deterministic)."""
  height, width = image_u8.shape[0], image_u8.shape[1]
  return _resize_box(_to_planar(image_u8), 0.0, 0.0, float(height), float(width), out_size)


# ----------------------------------------------------------------------------- colour


def _rgb_to_hsv(r, g, b) -> tuple[jax.Array, jax.Array, jax.Array]:
  """RGB planes -> (h, s, v) planes, as TF / BYOL."""
  value = jnp.maximum(jnp.maximum(r, g), b)
  minimum = jnp.minimum(jnp.minimum(r, g), b)
  rng = value - minimum
  safe_value = jnp.where(value > 0, value, 1.0)
  safe_rng = jnp.where(rng > 0, rng, 1.0)
  sat = jnp.where(value > 0, rng / safe_value, 0.0)
  norm = 1.0 / (6.0 * safe_rng)
  hue = jnp.where(value == g, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0)
  hue = jnp.where(value == r, norm * (g - b), hue)
  hue = jnp.where(rng > 0, hue, 0.0)
  hue = hue + (hue < 0.0).astype(hue.dtype)
  return hue, sat, value


def _hue_shift(r, g, b, delta) -> list[jax.Array]:
  """RGB planes with their HSV hue rotated by `delta` (turns), as TF's adjust_hue / BYOL.

  HSV -> RGB in closed form: channel n (5, 3, 1 for r, g, b) is v - s v clip(min(k, 4 - k), 0, 1)
  with k = (n + 6 h) mod 6.
  """
  h, s, v = _rgb_to_hsv(r, g, b)
  h = h + delta
  h = 6.0 * (h - jnp.floor(h))  # in [0, 6); floor, not %, which XLA:CPU runs as a scalar fmod call
  return [v - s * v * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
          for k in (jnp.where(n + h >= 6.0, n + h - 6.0, n + h) for n in (5.0, 3.0, 1.0))]


def _color_jitter(x: jax.Array, u: jax.Array, cfg, apply: jax.Array) -> jax.Array:
  """BYOL colour jitter: brightness, contrast, saturation, hue in a random order, clip after each.

  Same result as BYOL's 4 x 4 grid of conditionals (which vmap would turn into 16 evaluated
  transforms, 8 HSV round trips), in one pass over the image per cheap op that is on (3 for RGB,
  2 for grayscale):
  - brightness x + b, contrast x c + mean (1 - c) and saturation are all x * factor + offset.
    Saturation in HSV (s -> clip(s f, 0, 1), same h and v) is, per pixel, x -> v - r (v - x) with
    v = max channel and r = clip(s f, 0, 1) / s = min(f, v / (v - min)): no HSV round trip.
  - pass k applies the k-th cheap op of this example's order, then hue if hue comes next: hue's
    round trip is arithmetic in every pass, kept in one, never a pass of its own.
  - the image is a list of channel planes, not one [C, H, W] array: every output channel depends on
    all channels of its pixel, and XLA computes a list of same-shaped results in one multi-output
    kernel that reads each pixel once, where for a stacked array it writes the per-pixel values
    (v, ratio, h) out and reads them back (for an H100: twice the bytes moved, per XLA's program).
  - each pass ends in an optimization_barrier: otherwise XLA fuses a pass's per-channel reads into
    the next pass and recomputes the chain up to 3^passes times (measured 10x slower on CPU).
  """
  brightness, contrast = float(cfg.brightness), float(cfg.contrast)
  saturation, hue = (float(cfg.saturation), float(cfg.hue)) if x.shape[0] == 3 else (0.0, 0.0)
  cheap = [op for op, strength in ((0, brightness), (1, contrast), (2, saturation)) if strength > 0]
  if not cheap and not hue > 0:
    return x
  b = _lerp(u[_U_BRIGHT], -brightness, brightness)
  c = _lerp(u[_U_CONTRAST], 1 - contrast, 1 + contrast)
  f = _lerp(u[_U_SAT], 1 - saturation, 1 + saturation)
  dh = _lerp(u[_U_HUE], -hue, hue)
  # The four ops (0 b, 1 c, 2 s, 3 h) in the random order of their ranks; leaving out the ops that
  # are off keeps the others' relative order.
  rank, ops = u[_U_ORDER], jnp.asarray(cheap or [0])
  sequence = ops[jnp.argsort(rank[ops])]  # the cheap ops in the order they apply
  hue_slot = jnp.sum(rank[ops] < rank[3]) if cheap else 0  # how many cheap ops come before hue

  def cheap_op(planes, op):
    factor = jnp.where(op == 1, c, 1.0)
    offset = jnp.where(op == 0, b, 0.0)
    if saturation > 0:
      v = jnp.maximum(jnp.maximum(planes[0], planes[1]), planes[2])
      rng = v - jnp.minimum(jnp.minimum(planes[0], planes[1]), planes[2])
      ratio = jnp.where(rng > 0, jnp.minimum(f, v / jnp.where(rng > 0, rng, 1.0)), 1.0)
      factor = jnp.where(op == 2, ratio, factor)
      offset = jnp.where(op == 2, v * (1.0 - ratio), offset)
    out = []
    for p in planes:
      off = offset + jnp.where(op == 1, jnp.mean(p) * (1.0 - c), 0.0) if contrast > 0 else offset
      out.append(jnp.where(apply, jnp.clip(p * factor + off, 0.0, 1.0), p))
    return out

  def hue_op(planes, slot):
    if not hue > 0:
      return planes
    on = apply & (hue_slot == slot)
    return [jnp.where(on, jnp.clip(s, 0.0, 1.0), p) for s, p in zip(_hue_shift(*planes, dh), planes)]

  planes = hue_op([x[i] for i in range(x.shape[0])], 0)
  for k in range(len(cheap)):
    planes = list(jax.lax.optimization_barrier(hue_op(cheap_op(planes, sequence[k]), k + 1)))
  return jnp.stack(planes)


def _grayscale(x: jax.Array) -> jax.Array:
  gray = _GRAY_WEIGHTS[0] * x[0] + _GRAY_WEIGHTS[1] * x[1] + _GRAY_WEIGHTS[2] * x[2]
  return jnp.broadcast_to(gray[None], x.shape)


# ----------------------------------------------------------------------------- blur


def blur_kernel_size(frac: float, out_size: int) -> int:
  """int(frac * out_size), made odd (at least 3 when frac > 0; 1 = no blur when frac == 0)."""
  if frac <= 0:
    return 1
  k = int(frac * out_size)
  if k % 2 == 0:
    k += 1
  return max(k, 3)


def _gaussian_blur(x: jax.Array, sigma: jax.Array, apply: jax.Array, ksize: int) -> jax.Array:
  """Separable Gaussian blur with reflect padding. When `apply` is False the kernel is a unit
  impulse, which returns x bit-exactly (0*x + x), so vmap evaluates one blur, not two branches."""
  half = ksize // 2
  taps = jnp.arange(ksize, dtype=jnp.float32) - half
  kernel = jnp.exp(-0.5 * (taps / sigma) ** 2)
  kernel = kernel / jnp.sum(kernel)
  kernel = jnp.where(apply, kernel, (taps == 0).astype(jnp.float32))
  height, width = x.shape[1], x.shape[2]  # planar [C, H, W]
  mode = 'reflect' if half < min(height, width) else 'edge'
  # Each pass reads a materialised padded input: otherwise XLA fuses the producers (the colour ops,
  # and the first pass into the second) into every tap and recomputes them ksize (ksize^2) times.
  xp = jax.lax.optimization_barrier(jnp.pad(x, ((0, 0), (half, half), (0, 0)), mode=mode))
  x = sum(kernel[i] * xp[:, i:i + height] for i in range(ksize))
  xp = jax.lax.optimization_barrier(jnp.pad(x, ((0, 0), (0, 0), (half, half)), mode=mode))
  return sum(kernel[i] * xp[:, :, i:i + width] for i in range(ksize))


# ----------------------------------------------------------------------------- views

_PROB_FIELDS = ('flip_prob', 'jitter_prob', 'grayscale_prob', 'blur_prob', 'solarize_prob')


def _view_probs(cfg, view: int) -> dict[str, float]:
  return {name: _per_view(cfg[name], view) for name in _PROB_FIELDS}


def _augment(image_u8: jax.Array, u: jax.Array, probs, enabled: dict[str, bool], cfg,
             out_size: int) -> jax.Array:
  """The augmentation of one view, from its uniforms `u` [_NUM_UNIFORMS]. `probs` values may be
  traced (two_views vmaps over the two views); `enabled` (static) says which ops to trace at all."""
  height, width, channels = image_u8.shape
  if channels not in (1, 3):
    raise ValueError(f'expected 1 or 3 channels, got image shape {image_u8.shape}')

  # Random resized crop (one fused resampling op).
  if cfg.get('random_crop', True):
    y0, x0, h, w = _sample_crop_box(u, height, width, _pair(cfg.crop_scale), _pair(cfg.crop_ratio))
    x = _resize_box(_to_planar(image_u8), y0, x0, h, w, out_size)
  else:
    x = _full_image(image_u8, out_size)

  if enabled['flip_prob']:
    x = jnp.where(u[_U_FLIP] < probs['flip_prob'], x[:, :, ::-1], x)

  if enabled['jitter_prob']:
    x = _color_jitter(x, u, cfg, u[_U_JITTER] < probs['jitter_prob'])

  if channels == 3 and enabled['grayscale_prob']:
    x = jnp.where(u[_U_GRAY] < probs['grayscale_prob'], _grayscale(x), x)

  ksize = blur_kernel_size(float(cfg.blur_kernel_frac), out_size)
  if enabled['blur_prob'] and ksize > 1:
    lo, hi = _pair(cfg.blur_sigma)
    x = _gaussian_blur(x, _lerp(u[_U_SIGMA], lo, hi), u[_U_BLUR] < probs['blur_prob'], ksize)

  if enabled['solarize_prob']:
    x = jnp.where((u[_U_SOLARIZE] < probs['solarize_prob']) & (x >= 0.5), 1.0 - x, x)

  return jnp.moveaxis(jnp.clip(x, 0.0, 1.0), 0, -1)


def augment_view(image_u8: jax.Array, key: jax.Array, cfg, view: int, out_size: int) -> jax.Array:
  """One augmented view of one image: uint8 [H, W, C] (C = 1 or 3) -> float32 [out, out, C] in [0, 1].

  `view` (0 or 1) selects the per-view probabilities. `cfg` is read at trace time (python values),
  so ops whose probability is 0 are not traced at all. `two_views` gives, for view v of an example,
  exactly `augment_view(image, example_key(seed, step, index, v), cfg, v, out_size)`.
  """
  probs = _view_probs(cfg, view)
  u = jax.random.uniform(key, (_NUM_UNIFORMS,))
  return _augment(image_u8, u, probs, {k: p > 0 for k, p in probs.items()}, cfg, out_size)


def example_key(seed, step, index, view) -> jax.Array:
  """fold_in(fold_in(fold_in(PRNGKey(seed), step), index), view): the key of one view of one
  example, independent of batch position and device."""
  key = jax.random.PRNGKey(seed)
  key = jax.random.fold_in(key, step)
  key = jax.random.fold_in(key, index)
  return jax.random.fold_in(key, view)


def two_views(images_u8: jax.Array, indices: jax.Array, step, seed, cfg,
              out_size: int) -> tuple[jax.Array, jax.Array]:
  """Two augmented views of a batch: uint8 [B, H, W, C] -> two float32 [B, out, out, C] in [0, 1].

  `indices` [B] are global dataset indices, `step` an int32 scalar (may be traced), `seed` a python
  int or uint32 scalar. View v of example i uses `example_key(seed, step, indices[i], v)` (v = 0, 1).
  `cfg` and `out_size` are static: jit with e.g. `jax.jit(functools.partial(two_views, cfg=cfg,
  out_size=32))`. The two views are one vmapped computation (traced and compiled once).
  """
  p0, p1 = _view_probs(cfg, 0), _view_probs(cfg, 1)
  enabled = {k: p0[k] > 0 or p1[k] > 0 for k in _PROB_FIELDS}
  probs = {k: jnp.asarray([p0[k], p1[k]], jnp.float32) for k in _PROB_FIELDS}
  views = jnp.arange(2, dtype=jnp.int32)
  base = jax.random.fold_in(jax.random.PRNGKey(seed), step)

  def one(image, index):
    key = jax.random.fold_in(base, index)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, views)
    u = jax.vmap(lambda k: jax.random.uniform(k, (_NUM_UNIFORMS,)))(keys)
    return jax.vmap(lambda uu, pp: _augment(image, uu, pp, enabled, cfg, out_size))(u, probs)

  out = jax.vmap(one)(images_u8, jnp.asarray(indices, jnp.int32))  # [B, 2, out, out, C]
  return out[:, 0], out[:, 1]


@functools.partial(jax.jit, static_argnames='out_size')
def eval_view(images_u8: jax.Array, out_size: int) -> jax.Array:
  """Deterministic view: the whole image resized (bilinear, antialiased) to out_size, float32 in
  [0, 1], uint8 [B, H, W, C] -> [B, out, out, C]. Identical to the 'none' preset's views."""
  return jax.vmap(lambda im: jnp.moveaxis(jnp.clip(_full_image(im, out_size), 0.0, 1.0), 0, -1))(
      images_u8)


def two_views_from_crops(view1_u8: jax.Array, view2_u8: jax.Array, indices: jax.Array, step, seed, cfg,
                         out_size: int) -> tuple[jax.Array, jax.Array]:
  """The device half of the ImageNet augmentation, for views already cropped on the host.

  `view1_u8`, `view2_u8`: uint8 [B, S, S, C], two independent random-resized crops of the same images
  (`byol_jax.data.tfds_source.ImageNetPipeline`). Each goes through `augment_view` with the crop
  disabled (`random_crop=False`: the whole crop is resized to `out_size`, a no-op when S == out_size),
  i.e. flip, colour jitter, grayscale, blur and solarize with view v's probabilities. View v of
  example i uses `example_key(seed, step, indices[i], v)`, as `two_views` does, so the result does not
  depend on the batch position or the device. Returns two float32 [B, out, out, C] in [0, 1]
  (not normalised). `cfg` and `out_size` are static.
  """
  nocrop = ml_collections.ConfigDict(dict(cfg))
  nocrop.random_crop = False
  indices = jnp.asarray(indices, jnp.int32)

  def views(images, view):
    keys = jax.vmap(lambda i: example_key(seed, step, i, view))(indices)
    return jax.vmap(lambda im, k: augment_view(im, k, nocrop, view, out_size))(images, keys)

  return views(view1_u8, 0), views(view2_u8, 1)
