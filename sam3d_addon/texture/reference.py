"""Colour relative to a reference: the reference colour of the tiny texture model's decoders.

With `color_reference` on (the tiny preset's decoders; see `nn.slat_decoders.SLatDecoderConfig`)
the structured latent encodes each voxel's colour *relative to one colour of the object*, and its
decoders' colour outputs are relative too: 0.5 means "the reference colour", other values shift
it in logit space.  Why: a flow trained for an hour on 2 CPU cores learnt to follow the photo only
part of the way (measured on 0.2.0: a white object came out 0.48 grey); with relative colours it
spends its capacity on how voxels differ, and the object's colour comes from the reference.

Which reference (the card's `decoders.color_reference`, contract.py):
* "predicted_albedo" (0.4.0): the texture condition encoder's `albedo` output, the crop's mean
  colour de-lit by a learnt shift (`train.texture.TextureConditionEncoder.albedo`); in training
  the reference is each object's true mean albedo.
* "crop_mean" (0.3.0): the mask-weighted mean of the prepared crop (`crop_reference_color`).
NumPy only; `train/texture.py` has the torch twin of `absolute_colors` for the losses (tested equal).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

REFERENCE_CLIP = (0.02, 0.98)  # keeps the reference's logit finite (black and white photos)
COLOR_CLIP = (1e-4, 1.0 - 1e-4)


def crop_reference_color(image, mask) -> np.ndarray:
    """Mask-weighted mean RGB [3] of a prepared crop: image [(1,) 3, S, S] in [0, 1], mask
    [(1,) 1, S, S] in [0, 1].  The whole crop's mean when the mask is empty."""
    image = np.asarray(image, np.float64).reshape(3, *np.shape(image)[-2:])
    weight = np.asarray(mask, np.float64).reshape(np.shape(mask)[-2:])
    if weight.sum() < 1.0:
        weight = np.ones_like(weight)
    return (image * weight).sum(axis=(1, 2)) / weight.sum()


def absolute_colors(relative, reference) -> np.ndarray:
    """Relative colours [..., 3] (0.5 = the reference) -> sRGB in (0, 1)."""
    rel = np.clip(np.asarray(relative, np.float64), *COLOR_CLIP)
    ref = np.clip(np.asarray(reference, np.float64), *REFERENCE_CLIP)
    return expit(logit(rel) + logit(ref)).astype(np.float32)


def relative_colors(albedo, reference) -> np.ndarray:
    """The inverse of `absolute_colors`: sRGB [..., 3] -> colours relative to `reference`."""
    alb = np.clip(np.asarray(albedo, np.float64), *COLOR_CLIP)
    ref = np.clip(np.asarray(reference, np.float64), *REFERENCE_CLIP)
    return expit(logit(alb) - logit(ref)).astype(np.float32)
