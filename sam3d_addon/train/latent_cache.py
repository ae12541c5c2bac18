"""Encoded training latents, kept on disk between runs.

Why: a run that goes on from a trained model (`sam3d train --init`) keeps its VAE, so the shape
latents of its training grids are the same in every such run; yet encoding them took 24 minutes
for 2 x 49,683 grids (plain and mirrored) on 2 CPU cores, a quarter of a 95-minute run.

The key is a hash of everything the latents depend on: the encoder's weights, the grids
themselves, mirrored or not, and the kind of device that encodes them (a GPU's sums differ from
the CPU's in the last bits).  So a hit returns the very array the encoder would, and any change
is a miss.  Files hold the encoder's raw means (float32 [N, T, C]); normalising is the trainer's.

Where: $SAM3D_LATENT_CACHE, else ~/.cache/sam3d/latents; SAM3D_LATENT_CACHE=off keeps none.
About 100 MB per 50,000 grids (once plain, once mirrored).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

ENV = "SAM3D_LATENT_CACHE"


def cache_dir() -> Path | None:
    value = os.environ.get(ENV, "").strip()
    if value.lower() == "off":
        return None
    return Path(value) if value else Path.home() / ".cache" / "sam3d" / "latents"


def cache_key(encoder_state: dict[str, np.ndarray], grids: np.ndarray, mirrored: bool, device_kind: str) -> str:
    """The hex key of one set of latents (encoder_state: name -> numpy array)."""
    h = hashlib.sha256()
    for name in sorted(encoder_state):
        value = np.ascontiguousarray(encoder_state[name])
        h.update(f"{name}:{value.dtype}:{value.shape};".encode())
        h.update(value.tobytes())
    h.update(f"grids:{grids.shape};".encode())
    h.update(np.packbits(np.asarray(grids, bool), axis=None).tobytes())
    h.update(f"mirrored={bool(mirrored)};device={device_kind}".encode())
    return h.hexdigest()[:32]


def load(key: str, count: int) -> np.ndarray | None:
    """The cached latents of `key`, or None (no cache, no file, or not `count` rows)."""
    root = cache_dir()
    path = None if root is None else root / f"{key}.npy"
    if path is None or not path.is_file():
        return None
    try:
        latents = np.load(path)
    except (OSError, ValueError):
        return None  # a damaged file is a miss; the save after encoding replaces it
    return latents if latents.ndim == 3 and len(latents) == count else None


def save(key: str, latents: np.ndarray) -> Path | None:
    """Write (then rename, so a cut-off write leaves no half file); a cache that cannot be written
    is said once on stderr and skipped: it only saves time."""
    root = cache_dir()
    if root is None:
        return None
    path = root / f"{key}.npy"
    partial = root / f"{key}.partial.npy"
    try:
        root.mkdir(parents=True, exist_ok=True)
        np.save(partial, np.asarray(latents, np.float32))
        partial.replace(path)
    except OSError as exc:
        print(f"train: latents not cached ({ENV}={root}): {exc.strerror or exc}", file=sys.stderr)
        return None
    return path
