"""Reader for the synthetic data engine's output (NumPy only; no bpy, no manifold3d).

Layout: DIR/meta.json and DIR/{train,test}/NNNNNN.npz.  Keys of one sample (H = W = resolution):

  rgb            uint8 [H,W,3]    the photo (render pasted over a procedural background)
  mask           bool [H,W]       visible pixels of the target (object-index pass)
  amodal_mask    bool [H,W]       the target's full silhouette, occluders ignored (>= mask)
  depth          float32 [H,W]    camera-space z of the nearest object surface (target or
                                  occluder), inf where none
  pointmap       float32 [H,W,3]  those surface points in the PyTorch3D camera frame
                                  (+x left, +y up, +z forward), NaN where none
  occupancy      bool [32,32,32]  (stored packbits + occupancy_shape) solid, canonical frame,
                                  cell centres (c + 0.5) / 32 - 0.5, axes x, y, z = dims 0, 1, 2
  rotation       float32 [3,3]    } pose: p_cam = R^T (s * p_obj) + t  (pose.py conventions)
  translation    float32 [3]      }
  scale          float32 [3]      } s = metric largest extent (isotropic)
  vertices       float32 [V,3]    canonical mesh (inside [-0.5, 0.5]^3), for surface metrics
  faces          int32 [F,3]
  category       str              procedural category of the target
  seed           int              the sample's own seed (from SeedSequence([seed, split, index]))
  occluded       bool             an occluder hides part of the target
  fov_deg        float            field of view across the image
Extras: visible_fraction, occluder_category, split, index, attempt (re-rolls), base_seed,
size_m, camera_matrix_world / object_matrix_world (Blender 4x4), focal_px.

Texture ground truth (`sam3d data --texture`; meta.json "texture": true and "texture_views";
views and conventions in texture_views.py), V = 8 views of the target alone, unlit:

  tex_views_albedo    uint8 [V,64,64,3]  sRGB base colour, straight alpha, 0 where alpha is 0
  tex_views_alpha     uint8 [V,64,64]    covered fraction of each pixel, 0..255
  tex_views_camera    float64 [V,4,4]    Blender camera matrix_world (field of view fov_deg);
                                         views 0-3 are the novel views (azimuth 45/135/225/315
                                         from the photo camera's, elevation 25)
  tex_views_depth     float32 [V,64,64]  camera-space depth of the pixel centre, inf = none
  tex_voxel_coords    int16 [S,3]        surface voxels of the occupancy grid (occupied, with
                                         an empty 6-neighbour), C order
  tex_voxel_albedo    uint8 [S,3]        their sRGB albedo (mean of back-projected linear
                                         colours; unobserved: the nearest observed voxel's)
  tex_voxel_observed  bool [S]           a back-projected pixel reached the voxel
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .occupancy import unpack_occupancy

SPLIT_NAMES = ("train", "test")


def _root(root) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise InputError(f"No dataset directory {path}; generate one with: sam3d data --out {path} --n N")
    return path


def load_meta(root) -> dict:
    path = _root(root) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is missing; {path.parent} is not a finished sam3d data directory.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"Cannot read {path}: {exc}.") from None


def list_samples(root, split: str = "train") -> list[Path]:
    """Sample files of a split, sorted by index."""
    if split not in SPLIT_NAMES:
        raise InputError(f"Unknown split {split!r}; use one of: {', '.join(SPLIT_NAMES)}.")
    folder = _root(root) / split
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("[0-9]*.npz") if p.stem.isdigit())


def load_sample(path) -> dict:
    """One sample as a dict of arrays; occupancy unpacked to bool [32,32,32], 0-d values as
    Python scalars (category/split as str, seed/index as int, occluded as bool)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            sample = {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"Cannot read sample {path}: {exc}.") from None
    if "occupancy" not in sample or "occupancy_shape" not in sample:
        raise InputError(f"{path} is not a sam3d data sample (no occupancy).")
    sample["occupancy"] = unpack_occupancy(sample["occupancy"], sample.pop("occupancy_shape"))
    for key, value in list(sample.items()):
        if isinstance(value, np.ndarray) and value.ndim == 0:
            sample[key] = value.item()
    return sample
