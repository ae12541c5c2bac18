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
# Signed distances are learnt clamped to this band (fine-voxel units): only the surface matters.
SDF_CLAMP = 3.0


def surface_voxel_coords(occupancy: np.ndarray) -> np.ndarray:
    """[S, 3] int64 coords of the occupied voxels with at least one empty 6-neighbour (the grid's
    border counts as empty), lexicographic order: the texture stage's active voxels."""
    from scipy import ndimage

    occ = np.asarray(occupancy, bool)
    interior = ndimage.binary_erosion(occ, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return np.argwhere(occ & ~interior).astype(np.int64)


def fine_sdf_grid(vertices, faces, resolution: int) -> np.ndarray:
    """Signed distance (fine-voxel units, negative inside) at the cell centres of a resolution^3
    grid over [-0.5, 0.5]^3, from the mesh's solid occupancy at that resolution (distance between
    cell centres of the two sides, minus half a cell, so the zero level sits on the boundary)."""
    from scipy import ndimage

    from ..data.occupancy import occupancy_grid

    occ = occupancy_grid(vertices, faces, resolution)
    outside = ndimage.distance_transform_edt(~occ) - 0.5
    inside = ndimage.distance_transform_edt(occ) - 0.5
    return np.where(occ, -inside, outside).astype(np.float32)


def sparse_sdf_to_mesh(coords, sdf, rgb, resolution: int, surface_band: float = 1.5, inside=None):
    """coords [S, 3] int on a resolution^3 grid, sdf [S], rgb [S, 3] in [0, 1].

    `inside` (optional, bool, any resolution dividing `resolution`): a coarse solid occupancy whose
    occupied cells count as inside where no active voxel says otherwise.  The texture stage's
    active voxels are the coarse *surface*; without it, the hollow interior would be meshed too.

    Returns (vertices [V, 3] float32 in [-0.5, 0.5]^3, faces [F, 3] int32, colors [V, 3] float32).
    """
    from scipy.spatial import cKDTree

    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    sdf = np.asarray(sdf, dtype=np.float32).reshape(-1)
    rgb = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    inside_grid = ((coords >= 0) & (coords < resolution)).all(axis=1)
    coords, sdf, rgb = coords[inside_grid], sdf[inside_grid], rgb[inside_grid]
    field = np.full((resolution,) * 3, _OUTSIDE_SDF, np.float32)
    if inside is not None:
        inside = np.asarray(inside, bool)
        factor = resolution // inside.shape[0]
        dense = inside.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
        field[dense] = -_OUTSIDE_SDF
    field[coords[:, 0], coords[:, 1], coords[:, 2]] = sdf
    vertices, faces = occupancy_to_mesh(-field, level=0.0)
    if len(vertices) == 0:
        return vertices, faces, np.zeros((0, 3), np.float32)
    near = np.abs(sdf) <= surface_band
    source = near if near.any() else np.ones(len(sdf), bool)
    centres = (coords[source] + 0.5) / resolution - 0.5
    _, nearest = cKDTree(centres).query(vertices)
    return vertices, faces, rgb[source][nearest].astype(np.float32)
