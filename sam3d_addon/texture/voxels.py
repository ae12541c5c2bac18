"""Sparse per-voxel fields -> a coloured triangle mesh (the `sdf_rgb` mesh decoder's output).

The mesh decoder gives, on the subdivided voxels, a signed distance (negative inside, in voxel
units) and an RGB colour.  Inactive voxels of the grid are outside.  Marching cubes runs on the
dense grid (`meshing.occupancy_to_mesh`, same canonical frame: voxel centres at (c + 0.5)/R - 0.5),
and each vertex takes the colour of the nearest active voxel near the surface.
"""

from __future__ import annotations

import numpy as np

from ..meshing import occupancy_to_mesh

# The value of inactive voxels: outside, one voxel from the surface at least.
_OUTSIDE_SDF = 1.0


def sparse_sdf_to_mesh(coords, sdf, rgb, resolution: int, surface_band: float = 1.5):
    """coords [S, 3] int on a resolution^3 grid, sdf [S], rgb [S, 3] in [0, 1].

    Returns (vertices [V, 3] float32 in [-0.5, 0.5]^3, faces [F, 3] int32, colors [V, 3] float32).
    """
    from scipy.spatial import cKDTree

    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    sdf = np.asarray(sdf, dtype=np.float32).reshape(-1)
    rgb = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    inside_grid = ((coords >= 0) & (coords < resolution)).all(axis=1)
    coords, sdf, rgb = coords[inside_grid], sdf[inside_grid], rgb[inside_grid]
    field = np.full((resolution,) * 3, _OUTSIDE_SDF, np.float32)
    field[coords[:, 0], coords[:, 1], coords[:, 2]] = sdf
    vertices, faces = occupancy_to_mesh(-field, level=0.0)
    if len(vertices) == 0:
        return vertices, faces, np.zeros((0, 3), np.float32)
    near = np.abs(sdf) <= surface_band
    source = near if near.any() else np.ones(len(sdf), bool)
    centres = (coords[source] + 0.5) / resolution - 0.5
    _, nearest = cKDTree(centres).query(vertices)
    return vertices, faces, rgb[source][nearest].astype(np.float32)
