"""Pinhole camera helpers for the data engine (NumPy only).

Image convention: pixel (row i, column j) covers [j, j+1] x [i, i+1] in raster coordinates,
its centre is (j + 0.5, i + 0.5); rows go down.  The field of view spans the longer image side
(Blender's sensor_fit AUTO); images here are square.

Points are in the model (PyTorch3D) camera frame, +x left, +y up, +z forward (see pose.py):
    u = W/2 - f x / z,    v = H/2 - f y / z.
"""

from __future__ import annotations

import math

import numpy as np
from skimage import draw

from .. import pose as pose_lib


def focal_px(fov_deg: float, resolution: int) -> float:
    return pose_lib.fov_to_focal_px(fov_deg, resolution)


def look_at(eye, target, roll_deg: float = 0.0) -> np.ndarray:
    """Blender camera matrix_world at `eye` looking at `target`, world +Z up, optional roll."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    roll = math.radians(roll_deg)
    right, up = (math.cos(roll) * right + math.sin(roll) * up,
                 -math.sin(roll) * right + math.cos(roll) * up)
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2] = right, up, -forward  # Blender camera looks down its -Z
    M[:3, 3] = eye
    return M


def world_to_p3d_camera(points_world: np.ndarray, camera_matrix_world: np.ndarray) -> np.ndarray:
    """World points [N,3] -> model (PyTorch3D) camera frame."""
    C = np.asarray(camera_matrix_world, float)
    p_bcam = (np.asarray(points_world, float) - C[:3, 3]) @ C[:3, :3]  # = C_R^T (p - c)
    return p_bcam @ pose_lib.P3D_TO_BLENDER_CAMERA  # diag(-1, 1, -1) is symmetric and its own inverse


def canonical_to_p3d_camera(points: np.ndarray, R: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """p_cam = R^T (s * p_obj) + t for rows of `points` (pose.canonical_to_camera)."""
    return pose_lib.canonical_to_camera(points, R, t, s)


def project(points_cam: np.ndarray, fov_deg: float, resolution: int) -> np.ndarray:
    """Camera-frame points [N,3] (z > 0) -> raster coordinates (u, v) [N,2]."""
    f = focal_px(fov_deg, resolution)
    z = points_cam[:, 2]
    u = resolution / 2 - f * points_cam[:, 0] / z
    v = resolution / 2 - f * points_cam[:, 1] / z
    return np.stack([u, v], axis=1)


def silhouette(points_cam: np.ndarray, faces: np.ndarray, fov_deg: float, resolution: int) -> np.ndarray:
    """Binary mask [H,W] of a closed mesh (camera-frame vertices) seen through the camera.

    The silhouette of a closed mesh is the union of its front-facing triangles; each is filled
    with skimage.draw.polygon, which sets the pixels whose centres lie inside (the renderer's
    object-index pass samples pixel centres too: on unoccluded renders the two agree to IoU
    0.99-1.0).
    """
    if np.any(points_cam[:, 2] <= 1e-6):
        raise ValueError("silhouette: mesh crosses the camera plane")
    tri = project(points_cam, fov_deg, resolution)[faces]  # [F,3,2] raster (u, v)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    # with u right and v down, outward counter-clockwise faces that face the camera have
    # negative signed area; degenerate (edge-on) faces add nothing
    signed = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    front = tri[signed < 0] - 0.5  # skimage puts pixel centres at integer coordinates
    lo, hi = front.min(axis=1), front.max(axis=1)
    # skip triangles whose bounding box holds no pixel centre or lies outside the image
    keep = (np.floor(hi) >= np.ceil(lo)).all(axis=1) & (hi >= 0).all(axis=1) & (lo <= resolution - 1).all(axis=1)
    mask = np.zeros((resolution, resolution), dtype=bool)
    for t in front[keep]:
        rows, cols = draw.polygon(t[:, 1], t[:, 0], shape=mask.shape)
        mask[rows, cols] = True
    return mask


def pointmap_from_depth(depth: np.ndarray, fov_deg: float) -> np.ndarray:
    """Depth (camera z, inf = no surface) [H,W] -> points [H,W,3] in the model camera frame, NaN = none."""
    h, w = depth.shape
    f = focal_px(fov_deg, max(h, w))
    j = np.arange(w) + 0.5
    i = np.arange(h) + 0.5
    x_over_z = -(j[None, :] - w / 2) / f  # +x is left
    y_over_z = -(i[:, None] - h / 2) / f  # +y is up, rows go down
    z = np.where(np.isfinite(depth), depth, np.nan).astype(np.float32)
    return np.stack([np.broadcast_to(x_over_z, (h, w)) * z, np.broadcast_to(y_over_z, (h, w)) * z, z],
                    axis=-1).astype(np.float32)
