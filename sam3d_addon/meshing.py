"""Occupancy grid -> triangle mesh in the canonical object frame.

Marching cubes from scikit-image on the decoder's logits (a smoother surface than on the 0/1
grid), trimesh for clean-up.  Voxel centres sit at (c + 0.5)/R - 0.5, so the canonical frame is
the cube [-0.5, 0.5]^3 on the grid axes (x, y, z) = array dims (0, 1, 2).
"""

from __future__ import annotations

import numpy as np

# Padding value for logits outside the grid: far below any threshold, so surfaces close.
_OUTSIDE = -1e4


def occupancy_to_mesh(field: np.ndarray, level: float = 0.0, min_component_fraction: float = 0.02):
    """Mesh the region `field > level`; `field` is logits or a 0/1 grid (then use level 0.5).

    Returns (vertices [V,3] float32, faces [F,3] int32).  Tiny disconnected specks (under
    `min_component_fraction` of the faces) are dropped.  An empty field gives empty arrays.
    """
    from skimage.measure import marching_cubes
    import trimesh

    field = np.asarray(field, dtype=np.float32)
    res = field.shape[0]
    if not (field > level).any():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)
    # Clamp logits so marching cubes interpolates sensibly near the surface.
    padded = np.pad(np.clip(field, -10.0, 10.0), 1, constant_values=max(_OUTSIDE, -10.0))
    verts, faces, _, _ = marching_cubes(padded, level=level)
    verts = (verts - 1.0 + 0.5) / res - 0.5
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    if len(mesh.faces) and min_component_fraction > 0:
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            keep = [p for p in parts if len(p.faces) >= min_component_fraction * len(mesh.faces)]
            mesh = trimesh.util.concatenate(keep or [max(parts, key=lambda p: len(p.faces))])
    mesh.fix_normals()
    return mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32)
