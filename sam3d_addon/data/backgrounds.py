"""Procedural backgrounds and the render-paste compositing (NumPy only).

Backgrounds are float sRGB images in [0, 1]: gradients, fractal noise, stripes, tiles, blurred
random shapes and room-like floor/wall splits, layered, colour-jittered, grained and sometimes
defocused.  `composite` pastes a premultiplied linear RGBA render over one of them in linear
light, then applies exposure and the sRGB transfer function (Blender's "Standard" view).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from scipy import ndimage
from skimage import draw


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055)


def random_color(rng, saturation=(0.0, 0.9), value=(0.15, 0.95)) -> np.ndarray:
    """An sRGB colour from a random hue / saturation / value."""
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value)))


def _coords(size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return (x + 0.5) / size, (y + 0.5) / size


def _fractal_noise(rng, size, base_cells=None, octaves=4) -> np.ndarray:
    """Smooth noise in [0, 1]: random grids upsampled with cubic splines, halving amplitude per octave."""
    out = np.zeros((size, size))
    cells = base_cells or int(rng.integers(2, 6))
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        grid = rng.random((cells + 3, cells + 3))
        up = ndimage.zoom(grid, (size + 2 * size / cells) / (cells + 3), order=3)
        off = int(size / cells)
        out += amp * up[off:off + size, off:off + size][:size, :size]
        total += amp
        amp *= 0.5
        cells *= 2
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _mix(a, b, t):
    return a * (1 - t[..., None]) + b * t[..., None]


def _gradient(rng, size):
    x, y = _coords(size)
    if rng.random() < 0.6:
        angle = rng.uniform(0, 2 * np.pi)
        t = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle) + 0.5
    else:  # radial
        cx, cy = rng.uniform(0.1, 0.9, size=2)
        t = np.hypot(x - cx, y - cy) / rng.uniform(0.4, 1.0)
    t = np.clip(t, 0, 1)
    a, b = random_color(rng), random_color(rng)
    return _mix(np.broadcast_to(a, (size, size, 3)), np.broadcast_to(b, (size, size, 3)), t)


def _noise(rng, size):
    a, b = random_color(rng), random_color(rng)
    t = _fractal_noise(rng, size)
    if rng.random() < 0.5:  # posterised blotches
        t = np.round(t * rng.integers(2, 5)) / 4
    return _mix(np.broadcast_to(a, (size, size, 3)), np.broadcast_to(b, (size, size, 3)), np.clip(t, 0, 1))


def _stripes(rng, size):
    x, y = _coords(size)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(3, 25)
    s = (x * math.cos(angle) + y * math.sin(angle)) * freq
    t = (np.sin(2 * np.pi * s) + 1) / 2
    if rng.random() < 0.6:  # hard stripes
        t = (t > rng.uniform(0.3, 0.7)).astype(float)
    a, b = random_color(rng), random_color(rng)
    return _mix(np.broadcast_to(a, (size, size, 3)), np.broadcast_to(b, (size, size, 3)), t)


def _tiles(rng, size):
    x, y = _coords(size)
    angle = rng.uniform(-0.5, 0.5)
    n = rng.uniform(3, 14)
    u = (x * math.cos(angle) - y * math.sin(angle)) * n
    v = (x * math.sin(angle) + y * math.cos(angle)) * n * rng.uniform(0.5, 2.0)
    checker = ((np.floor(u) + np.floor(v)) % 2).astype(float)
    a, b = random_color(rng), random_color(rng)
    img = _mix(np.broadcast_to(a, (size, size, 3)), np.broadcast_to(b, (size, size, 3)), checker * rng.uniform(0.2, 1.0))
    if rng.random() < 0.5:  # grout lines
        width = rng.uniform(0.03, 0.1)
        line = (np.abs(u - np.round(u)) < width) | (np.abs(v - np.round(v)) < width)
        img[line] = random_color(rng)
    return img


def _shapes(rng, size):
    img = np.broadcast_to(random_color(rng), (size, size, 3)).copy()
    for _ in range(int(rng.integers(4, 16))):
        colour = random_color(rng)
        kind = rng.integers(3)
        if kind == 0:
            rr, cc = draw.ellipse(rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, size / 2),
                                  rng.uniform(3, size / 2), shape=(size, size), rotation=rng.uniform(0, np.pi))
        elif kind == 1:
            r0, c0 = rng.uniform(-size / 4, size, size=2)
            rr, cc = draw.rectangle((r0, c0), extent=(rng.uniform(4, size / 2), rng.uniform(4, size / 2)),
                                    shape=(size, size))
            rr, cc = rr.astype(int).ravel(), cc.astype(int).ravel()
        else:
            pts = rng.uniform(-size / 4, size * 1.25, size=(int(rng.integers(3, 7)), 2))
            rr, cc = draw.polygon(pts[:, 0], pts[:, 1], shape=(size, size))
        img[rr, cc] = colour
    sigma = rng.uniform(0.5, 6.0) * size / 128
    return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0))


def _room(rng, size):
    """A wall above and a floor below a horizon line, each with its own texture."""
    x, y = _coords(size)
    horizon = rng.uniform(0.2, 0.75) + (x - 0.5) * rng.uniform(-0.2, 0.2)
    wall = _pick(rng, size, exclude=("room",))
    floor = _pick(rng, size, exclude=("room",))
    if rng.random() < 0.5:  # the floor darkens towards the horizon
        floor = floor * (0.6 + 0.4 * y[..., None])
    soft = np.clip((y - horizon) * size / rng.uniform(0.5, 3.0), 0, 1)
    return _mix(wall, floor, soft)


_KINDS = {"gradient": _gradient, "noise": _noise, "stripes": _stripes, "tiles": _tiles,
          "shapes": _shapes, "room": _room}


def _pick(rng, size, exclude=()):
    names = [k for k in _KINDS if k not in exclude]
    return _KINDS[names[int(rng.integers(len(names)))]](rng, size)


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float sRGB background [size, size, 3] in [0, 1]."""
    img = _pick(rng, size)
    if rng.random() < 0.5:  # layer a second pattern over it
        img = _mix(img, _pick(rng, size, exclude=("room",)), np.full((size, size), rng.uniform(0.15, 0.5)))
    if rng.random() < 0.5:  # low-frequency illumination variation
        img = img * (0.6 + 0.6 * _fractal_noise(rng, size, base_cells=2, octaves=2))[..., None]
    img = img * rng.uniform(0.8, 1.2, size=3)  # colour cast
    if rng.random() < 0.4:  # defocus
        sigma = rng.uniform(0.5, 2.5) * size / 128
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0))
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.03), size=img.shape)  # grain
    return np.clip(img, 0.0, 1.0)


def composite(rgba_linear: np.ndarray, background_srgb: np.ndarray, exposure: float = 1.0,
              grain: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Paste a premultiplied linear RGBA render over an sRGB background -> uint8 sRGB [H,W,3]."""
    rgb, alpha = rgba_linear[..., :3] * exposure, np.clip(rgba_linear[..., 3:4], 0.0, 1.0)
    out = rgb + (1.0 - alpha) * srgb_to_linear(background_srgb)
    out = linear_to_srgb(out)
    if grain > 0 and rng is not None:  # sensor noise over the whole photo, object included
        out = out + rng.normal(0.0, grain, size=out.shape)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
