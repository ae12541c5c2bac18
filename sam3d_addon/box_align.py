"""Align a sampled pose with its mask's bounding box: the geometry stage's last step.

Without a point map the flow reads an object's size and place from the image only roughly
(tiny 0.2.0 on the held-out split: the posed shape lands within 10 % of the object's diameter,
after depth alignment, for 41 % of the objects), while the mask's box pins two things exactly:
where the object is in the image and how large it looks.  So, in the model camera frame, the
sampled shape is projected, and (a) its scale is multiplied by the ratio of the mask box's longer
side to the projected box's longer side (the depth is kept, so the size in the image changes by
that ratio), (b) it is moved sideways at its depth so the two box centres meet.  A few rounds
settle the perspective.  The rotation, the depth and the shape are the model's.  Measured on the
same split: 0.41 -> 0.84 (`sam3d bench geometry`; `--no-box-align` scores the flow's own pose).

Plain NumPy, closed form, ~2 ms per object.
"""

from __future__ import annotations

import numpy as np

from .baseline import focal_px, mask_bbox, project_points
from .pose import canonical_to_camera

# A box ratio outside this range means the sample and the mask disagree about what the object
# is; scaling by it would only move the error, so the ratio is clamped.
MAX_SCALE_CHANGE = 4.0
# Every projected point must be this far in front of the camera (model camera units) to align.
MIN_DEPTH = 1e-3


def occupied_corners(occupancy: np.ndarray) -> np.ndarray:
    """Points in the canonical frame ([-0.5, 0.5]^3 cube) whose convex hull is the voxelised
    shape's, so their projection bounds its silhouette: per (x, y) column of the grid, the lower
    face corners of its lowest occupied voxel and the upper face corners of its highest (every
    voxel of the column lies between the two)."""
    occ = np.asarray(occupancy, dtype=bool)
    res = occ.shape[2]
    columns = occ.any(axis=2)
    if not columns.any():
        return np.zeros((0, 3))
    ij = np.argwhere(columns)
    low = occ.argmax(axis=2)[columns]
    high = res - occ[:, :, ::-1].argmax(axis=2)[columns]  # the upper face of the highest voxel
    face = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    points = []
    for z in (low, high):
        base = np.column_stack([ij, z]).astype(np.float64)
        points.append((base[:, None, :] + np.concatenate([face, np.zeros((4, 1))], axis=1)[None]).reshape(-1, 3))
    return np.concatenate(points) / res - 0.5


def align_pose_to_mask_box(occupancy: np.ndarray, R: np.ndarray, t: np.ndarray, s: np.ndarray,
                           mask: np.ndarray, fov_deg: float, rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(t, s) such that the posed occupancy's projected box matches the mask's box.

    Frames as in `pose.py` (p_cam = R^T (s p) + t) and the pinhole of `baseline.py` (field of view
    across the photo's longer side).  An empty shape or mask, or a shape reaching behind the
    camera, returns (t, s) unchanged.
    """
    t = np.array(t, dtype=np.float64).reshape(3)
    s = np.array(np.broadcast_to(np.asarray(s, dtype=np.float64).reshape(-1), (3,)))
    mask = np.asarray(mask, dtype=bool)
    corners = occupied_corners(occupancy)
    if len(corners) == 0 or not mask.any() or canonical_to_camera(corners, R, t, s)[:, 2].min() <= MIN_DEPTH:
        return t, s
    height, width = mask.shape
    u0, v0, u1, v1 = mask_bbox(mask)
    f = focal_px(fov_deg, height, width)
    for _ in range(rounds):
        uv = project_points(canonical_to_camera(corners, R, t, s), fov_deg, height, width)
        (pu0, pv0), (pu1, pv1) = uv.min(axis=0), uv.max(axis=0)
        ratio = max(u1 - u0, v1 - v0) / max(pu1 - pu0, pv1 - pv0, 1e-9)
        ratio = float(np.clip(ratio, 1.0 / MAX_SCALE_CHANGE, MAX_SCALE_CHANGE))
        du = (u0 + u1) / 2.0 - (pu0 + pu1) / 2.0
        dv = (v0 + v1) / 2.0 - (pv0 + pv1) / 2.0
        # u = W/2 - f x / z: a shift of du pixels at depth z is dx = -du z / f (likewise y).
        t_next = t + np.array([-du * t[2] / f, -dv * t[2] / f, 0.0])
        if canonical_to_camera(corners, R, t_next, s * ratio)[:, 2].min() <= MIN_DEPTH:
            break
        t, s = t_next, s * ratio
    return t, s
