"""A small unlit NumPy renderer for coloured meshes: what the texture benchmark compares against
the data engine's albedo views (no Blender, no GPU).

Per-vertex colours are interpolated perspective-correctly over each triangle and the nearest
fragment wins at each pixel centre (the same sampling as `bake.depth_buffer`).  Camera
convention: OpenCV (x right, y down, z forward), intrinsics K in pixels.
"""

from __future__ import annotations

import math

import numpy as np

from .bake import pinhole_intrinsics, project_points, rasterize


def render_vertex_colors(points_cam, faces, colors, intrinsics, width: int, height: int, near: float = 1e-6):
    """(rgb [H, W, 3] float, covered [H, W] bool) of a mesh with per-vertex colours [V, 3]."""
    points_cam = np.asarray(points_cam, np.float64)
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    colors = np.asarray(colors, np.float64).reshape(len(points_cam), -1)
    rgb = np.zeros((height, width, colors.shape[1]))
    covered = np.zeros((height, width), bool)
    if len(faces) == 0:
        return rgb, covered
    z = points_cam[:, 2]
    faces = faces[(z[faces] > near).all(axis=1)]  # triangles crossing the camera plane are dropped
    if len(faces) == 0:
        return rgb, covered
    face, px, py, bary = rasterize(project_points(points_cam, intrinsics)[faces], width, height)
    if len(face) == 0:
        return rgb, covered
    inv_z = 1.0 / z[faces[face]]  # [P, 3]
    weights = bary * inv_z  # perspective-correct: interpolate c/z and 1/z linearly on screen
    inv_depth = weights.sum(axis=1)
    pixel = py * width + px
    order = np.lexsort((-inv_depth, pixel))  # per pixel, nearest fragment (largest 1/z) first
    first = order[np.r_[True, pixel[order][1:] != pixel[order][:-1]]]
    w = weights[first] / inv_depth[first, None]
    values = np.einsum("pk,pkc->pc", w, colors[faces[face[first]]])
    rgb[py[first], px[first]] = values
    covered[py[first], px[first]] = True
    return rgb, covered


def blender_view_to_opencv(points_world, camera_matrix_world) -> np.ndarray:
    """World points -> the OpenCV camera frame of a Blender camera (looking down its -Z, +Y up)."""
    m = np.linalg.inv(np.asarray(camera_matrix_world, np.float64))
    p = np.asarray(points_world, np.float64) @ m[:3, :3].T + m[:3, 3]
    return p * np.array([1.0, -1.0, -1.0])


def view_intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """K of a Blender camera with sensor fit AUTO: the field of view spans the larger side."""
    focal = (max(width, height) / 2) / math.tan(math.radians(fov_deg) / 2)
    return pinhole_intrinsics(focal, width, height)


def render_canonical_mesh(vertices, faces, colors, object_matrix_world, camera_matrix_world,
                          fov_deg: float, width: int, height: int):
    """Render a canonical-frame mesh placed by `object_matrix_world` through a Blender camera."""
    v = np.asarray(vertices, np.float64)
    world = v @ np.asarray(object_matrix_world, np.float64)[:3, :3].T + np.asarray(object_matrix_world)[:3, 3]
    points = blender_view_to_opencv(world, camera_matrix_world)
    return render_vertex_colors(points, faces, colors, view_intrinsics(fov_deg, width, height), width, height)
