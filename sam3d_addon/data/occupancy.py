"""Ground-truth occupancy: a solid boolean grid of a canonical mesh.

Grid convention (the model's structure decoder uses the same): R^3 cells over [-0.5, 0.5]^3,
cell c along axis k has its centre at (c + 0.5) / R - 0.5, and axes (x, y, z) are array
dimensions (0, 1, 2).

A cell is occupied when the surface passes through it or when it lies inside the closed mesh.
Surface cells come from trimesh's subdivision voxeliser (every edge subdivided below half a
cell, each vertex marks its cell; this keeps thin parts such as chair legs and lamp shades),
and the interior is filled with scipy's binary hole filling, which fills every empty region
that the surface shell separates from the outside.  Long thin triangles (legs, rods) make
trimesh's 1-to-4 subdivision explode, so the mesh is first re-triangulated to about one cell
per edge with manifold3d's refine_to_length (same surface, well-shaped triangles): 2-3x faster.
"""

from __future__ import annotations

import numpy as np

# trimesh, scipy and manifold3d are imported where a grid is made: reading a data set
# (dataset.py, training, a training pack on a machine without them) needs only NumPy.

GRID_RESOLUTION = 32


def voxel_centres(resolution: int = GRID_RESOLUTION) -> np.ndarray:
    """Cell centres along one axis of the canonical grid."""
    return (np.arange(resolution) + 0.5) / resolution - 0.5


def occupancy_grid(vertices: np.ndarray, faces: np.ndarray, resolution: int = GRID_RESOLUTION) -> np.ndarray:
    """Solid occupancy [R, R, R] (bool) of a closed canonical mesh inside [-0.5, 0.5]^3."""
    import trimesh
    from scipy import ndimage
    from trimesh.voxel.creation import voxelize_subdivide

    pitch = 1.0 / resolution
    vertices, faces = _well_shaped(np.asarray(vertices, np.float64), np.asarray(faces), pitch)
    # shift so that cell c's centre sits at c * pitch: trimesh rounds vertex / pitch to a cell
    shifted = np.asarray(vertices, np.float64) + (0.5 - pitch / 2)
    mesh = trimesh.Trimesh(shifted, np.asarray(faces), process=False)
    surface = voxelize_subdivide(mesh, pitch, max_iter=16)
    origin = np.round(surface.transform[:3, 3] / pitch).astype(np.int64)
    # the largest extent touches +-0.5 exactly; rounding puts those faces half a cell outside
    cells = np.clip(surface.sparse_indices + origin, 0, resolution - 1)
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[cells[:, 0], cells[:, 1], cells[:, 2]] = True
    # interior: the shell is 26-connected, so 6-connected flood fill from outside cannot leak in
    return ndimage.binary_fill_holes(grid)


def _well_shaped(vertices: np.ndarray, faces: np.ndarray, edge: float):
    """The same surface re-triangulated with edges of about `edge` (unchanged if not possible)."""
    try:
        import manifold3d as mf
    except ImportError:  # pragma: no cover
        return vertices, faces
    solid = mf.Manifold(mf.Mesh(vertices.astype(np.float32), faces.astype(np.uint32)))
    if solid.status() != mf.Error.NoError or solid.is_empty():
        return vertices, faces
    mesh = solid.refine_to_length(edge).to_mesh()
    return np.asarray(mesh.vert_properties[:, :3], np.float64), np.asarray(mesh.tri_verts, np.int64)


def pack_occupancy(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(np.packbits of the flattened grid, its shape) for storage."""
    grid = np.asarray(grid, dtype=bool)
    return np.packbits(grid.reshape(-1)), np.asarray(grid.shape, dtype=np.int32)


def unpack_occupancy(packed: np.ndarray, shape) -> np.ndarray:
    shape = tuple(int(s) for s in np.asarray(shape).reshape(-1))
    count = int(np.prod(shape))
    return np.unpackbits(np.asarray(packed, np.uint8), count=count).astype(bool).reshape(shape)
