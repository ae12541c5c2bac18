"""The trivial baseline of the benchmark: an ellipsoid fitted to the mask's bounding box at the
median depth.

Camera: the model camera frame of `pose.py` (PyTorch3D: +x left, +y up, +z forward), a pinhole
with the principal point at the image centre and the field of view `fov_deg` across the longer
image side. A camera point (X, Y, Z) lands on pixel coordinates (u right, v down, pixel edges at
integers, so pixel (row i, column j) covers [j, j+1] x [i, i+1]):
    u = W/2 - f X / Z,   v = H/2 - f Y / Z,   f = (max(H, W) / 2) / tan(fov / 2).

Prediction for a mask with bounding box [u0, u1] x [v0, v1] (pixel edges), depth d (a constant,
the median object depth of the training split, passed in):
* t: the bbox centre back-projected to depth d;
* s: isotropic, the larger of the bbox width and height at depth d, (max(u1-u0, v1-v0)) d / f, so
  the canonical cube [-0.5, 0.5]^3 maps to a cube of that side;
* R: fixed "upright, facing the camera" rotation, by default the one that puts the object
  unrotated in Blender's world in front of Blender's default camera (pose.py): canonical +Z (up)
  -> camera +y (up), canonical +X -> image right (camera -x), canonical +Y -> away from the
  camera (camera +z). A rotation passed in (e.g. the training-set mean) replaces it;
* occupancy: the solid ellipsoid inscribed in the canonical cube whose semi-axes follow the bbox
  aspect: the axis seen across the image gets width / side / 2, the vertical one height / side / 2
  and the depth axis width / side / 2 (depth = width).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .pose import P3D_TO_BLENDER_CAMERA, default_camera_matrix_world

# R such that camera_pose_to_object_matrix(R, ...) has an identity rotation part in Blender's
# world with the default camera: C A R^T = I  ->  R = C A  (A = P3D_TO_BLENDER_CAMERA, own inverse).
UPRIGHT_FACING_CAMERA = default_camera_matrix_world()[:3, :3] @ P3D_TO_BLENDER_CAMERA


def focal_px(fov_deg: float, height: int, width: int) -> float:
    """Focal length in pixels for a field of view across the longer image side."""
    return (max(height, width) / 2.0) / math.tan(math.radians(fov_deg) / 2.0)


def project_points(points_cam: np.ndarray, fov_deg: float, height: int, width: int) -> np.ndarray:
    """Model-camera-frame points [N,3] -> pixel coordinates [N,2] (u right, v down)."""
    p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    f = focal_px(fov_deg, height, width)
    u = width / 2.0 - f * p[:, 0] / p[:, 2]
    v = height / 2.0 - f * p[:, 1] / p[:, 2]
    return np.stack([u, v], axis=1)


def backproject_pixel(u: float, v: float, depth: float, fov_deg: float, height: int, width: int) -> np.ndarray:
    """Pixel coordinates (u, v) at camera depth Z = depth -> model-camera-frame point."""
    f = focal_px(fov_deg, height, width)
    return np.array([-(u - width / 2.0) * depth / f, -(v - height / 2.0) * depth / f, float(depth)])


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(u0, v0, u1, v1) pixel-edge bounds of the mask; an empty mask gives the whole image."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return 0.0, 0.0, float(mask.shape[1]), float(mask.shape[0])
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def ellipsoid_occupancy(semi_axes: np.ndarray, resolution: int = 32) -> np.ndarray:
    """Solid axis-aligned ellipsoid centred in the canonical cube, on voxel centres (c+0.5)/R-0.5."""
    semi = np.clip(np.asarray(semi_axes, dtype=np.float64).reshape(3), 0.5 / resolution, 0.5)
    centres = (np.arange(resolution) + 0.5) / resolution - 0.5
    x, y, z = np.meshgrid(centres, centres, centres, indexing="ij")
    occ = (x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2 <= 1.0
    if not occ.any():  # a sliver thinner than a voxel still gets its centre voxel
        occ[resolution // 2, resolution // 2, resolution // 2] = True
    return occ


def ellipsoid_baseline(mask: np.ndarray, fov_deg: float, median_depth: float, resolution: int = 32,
                       rotation: np.ndarray | None = None) -> dict:
    """Baseline prediction for one mask: dict with `occupancy` bool [R,R,R], `R`, `t`, `s`."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    u0, v0, u1, v1 = mask_bbox(mask)
    f = focal_px(fov_deg, height, width)
    t = backproject_pixel((u0 + u1) / 2.0, (v0 + v1) / 2.0, median_depth, fov_deg, height, width)
    box_w = (u1 - u0) * median_depth / f
    box_h = (v1 - v0) * median_depth / f
    side = max(box_w, box_h)
    R = UPRIGHT_FACING_CAMERA.copy() if rotation is None else np.asarray(rotation, dtype=np.float64)
    # extent wanted along camera x, y, z (depth = width), as a fraction of the cube side
    camera_extent = np.array([box_w, box_h, box_w]) / side
    # canonical axis k points along camera direction R^T e_k (column k of R^T = row k of R);
    # exact for axis-permuting rotations, a weighted mix otherwise
    canonical_extent = np.abs(R) @ camera_extent
    return {
        "occupancy": ellipsoid_occupancy(canonical_extent / 2.0, resolution),
        "R": R,
        "t": t,
        "s": np.full(3, side),
    }


def make_baseline_predict_fn(median_depth: float, resolution: int = 32, rotation: np.ndarray | None = None):
    """A predict_fn for `bench_geometry.evaluate` running the ellipsoid baseline on sample dicts."""
    def predict(sample: dict) -> dict:
        start = time.perf_counter()
        out = ellipsoid_baseline(sample["mask"], float(sample["fov_deg"]), median_depth, resolution, rotation)
        out["seconds"] = time.perf_counter() - start
        return out

    return predict
