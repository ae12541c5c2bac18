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


def centre_inside_grid(vertices, faces, resolution: int) -> np.ndarray:
    """[R, R, R] bool: is each cell centre of the canonical grid inside the closed mesh?  Scanline
    parity: a ray from every centre along +x crosses the surface an odd number of times iff the
    centre is inside.  Each triangle is tested only against the lattice rows (y, z) its projection
    covers, so this takes milliseconds (trimesh's `contains` needs rtree/embree and casts one ray
    per point).  Rays are nudged off the lattice by 1e-7 cells so none runs exactly along an edge."""
    tri = (np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)] + 0.5) * resolution - 0.5  # centre c at c
    yz = tri[:, :, 1:] + np.array([0.37e-7, 0.61e-7])
    lo = np.clip(np.ceil(yz.min(axis=1)).astype(np.int64), 0, resolution - 1)
    hi = np.clip(np.floor(yz.max(axis=1)).astype(np.int64), -1, resolution - 1)
    ny, nz = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    face = np.nonzero((ny > 0) & (nz > 0))[0]
    sizes = ny[face] * nz[face]
    rep = np.repeat(face, sizes)  # one row per (triangle, lattice row its box covers)
    offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    j, k = lo[rep, 0] + offset // nz[rep], lo[rep, 1] + offset % nz[rep]
    a, b, c = yz[rep, 0], yz[rep, 1], yz[rep, 2]
    p = np.stack([j, k], axis=1).astype(np.float64)

    def cross(u, v):
        return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]

    area = cross(b - a, c - a)
    safe = np.where(area == 0, 1.0, area)
    w0, w1 = cross(b - p, c - p) / safe, cross(c - p, a - p) / safe
    w2 = 1.0 - w0 - w1
    hit = (area != 0) & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    x = (w0 * tri[rep, 0, 0] + w1 * tri[rep, 1, 0] + w2 * tri[rep, 2, 0])[hit]
    # a crossing at x is ahead of centres i < x: count it in bin ceil(x), then sum bins > i
    counts = np.zeros((resolution + 1, resolution, resolution), np.int32)
    np.add.at(counts, (np.clip(np.ceil(x).astype(np.int64), 0, resolution), j[hit], k[hit]), 1)
    ahead = np.cumsum(counts[::-1], axis=0)[::-1]
    return ahead[1:] % 2 == 1


def fine_sdf_at(vertices, faces, cells, resolution: int) -> np.ndarray:
    """Signed distance (fine-voxel units, negative inside) of the mesh at the centres of `cells`
    [N, 3] of a resolution^3 grid over [-0.5, 0.5]^3: the exact point-to-surface distance
    (`metrics.MeshDistance`) with the sign of `centre_inside_grid`.

    Why not a distance transform of the voxelised solid (what 0.3.0 trained on): our occupancy is
    conservative (a cell the surface passes through is occupied), so that zero level sits about
    half a fine voxel outside the surface.  Measured on 64 held-out objects, the targets themselves
    meshed by `sparse_sdf_to_mesh` reached F1@0.01 0.264 that way and 0.817 this way."""
    from ..metrics import MeshDistance

    cells = np.asarray(cells, np.int64).reshape(-1, 3)
    centres = (cells + 0.5) / resolution - 0.5
    distance = MeshDistance(vertices, faces, refine=True)(centres) * resolution
    inside = centre_inside_grid(vertices, faces, resolution)[cells[:, 0], cells[:, 1], cells[:, 2]]
    return np.where(inside, -distance, distance).astype(np.float32)


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
