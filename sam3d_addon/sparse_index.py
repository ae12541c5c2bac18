"""Index maps of sparse voxel sets, in NumPy (no torch): the inference path and the training code
share them.  See `nn/sparse.py` for how the graphs use them.

* `neighbour_index(coords)` -> [N, 27]: row of each of the 27 neighbours p + o, o in {-1,0,1}^3
  (x slowest, z fastest: the order of the KRSC kernel W[out, kx, ky, kz, in]), -1 where inactive.
* `downsample_index(coords)` -> coarse coords (floor(c/2), unique, lexicographic), the parent of
  each fine voxel and the up-to-8 children of each coarse voxel (-1 where missing).
* `subdivide_coords(coords)` -> the 8 children 2c + (i,j,k) of every voxel and their parents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The 27 kernel offsets in KRSC order: index = (ox+1)*9 + (oy+1)*3 + (oz+1).
KERNEL_OFFSETS = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(-1, 3)
# Child order of a voxel (official subdivide order): (0,0,0),(0,0,1),(0,1,0),...,(1,1,1).
CHILD_OFFSETS = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), -1).reshape(-1, 3)


def _as_coords(coords) -> np.ndarray:
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be [N, 3] integers, got shape {coords.shape}")
    return coords.astype(np.int64, copy=False)


def _linear_keys(coords: np.ndarray, span: int) -> np.ndarray:
    return (coords[..., 0] * span + coords[..., 1]) * span + coords[..., 2]


def neighbour_index(coords, offsets: np.ndarray = KERNEL_OFFSETS) -> np.ndarray:
    """Row index of every neighbour coords[i] + offsets[k] among coords, -1 where inactive.

    coords: [N, 3] distinct integer voxel coordinates (any order, negative allowed).
    Returns int64 [N, len(offsets)].  Sorted linear keys + searchsorted: O(N log N), no Python loop.
    """
    coords = _as_coords(coords)
    offsets = np.asarray(offsets, np.int64)
    n = len(coords)
    if n == 0:
        return np.zeros((0, len(offsets)), np.int64)
    reach = int(np.abs(offsets).max()) if offsets.size else 0
    # Shift so every queried neighbour has non-negative coordinates below `span` on each axis.
    shifted = coords - coords.min(axis=0) + reach
    span = int(shifted.max()) + reach + 1
    keys = _linear_keys(shifted, span)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if n > 1 and (np.diff(sorted_keys) == 0).any():
        raise ValueError("coords contain duplicate voxels")
    queries = _linear_keys(shifted[:, None, :] + offsets[None], span)
    pos = np.minimum(np.searchsorted(sorted_keys, queries), n - 1)
    return np.where(sorted_keys[pos] == queries, order[pos], -1).astype(np.int64)


def downsample_index(coords) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse grid of a sparse tensor, as the official `SparseDownsample(2)` builds it.

    Returns (coarse [M, 3] = unique(floor(coords / 2)) in lexicographic (x, y, z) order,
    parent [N] = row of each fine voxel's coarse voxel, children [M, 8] = row of each child in
    CHILD_OFFSETS order, -1 where that child is inactive).
    """
    coords = _as_coords(coords)
    halved = np.floor_divide(coords, 2)
    coarse, parent = np.unique(halved, axis=0, return_inverse=True)
    parent = parent.reshape(-1).astype(np.int64)
    slot = ((coords - 2 * halved) * np.array([4, 2, 1])).sum(axis=1)
    children = np.full((len(coarse), 8), -1, np.int64)
    children[parent, slot] = np.arange(len(coords))
    return coarse.astype(np.int64), parent, children


def subdivide_coords(coords) -> tuple[np.ndarray, np.ndarray]:
    """The 8 children 2c + CHILD_OFFSETS of every voxel, consecutive per parent; and their parents."""
    coords = _as_coords(coords)
    fine = (2 * coords[:, None, :] + CHILD_OFFSETS[None]).reshape(-1, 3)
    return fine, np.repeat(np.arange(len(coords), dtype=np.int64), 8)


@dataclass
class SparseLevels:
    """Index maps of one object's voxels over `len(coords)` grids, finest first.

    coords[l] [N_l, 3]; neighbours[l] [N_l, 27]; for l >= 1 parent[l] [N_{l-1}] (fine -> coarse row)
    and children[l] [N_l, 8] (coarse -> fine rows).  parent[0] / children[0] are None.
    """

    coords: list[np.ndarray]
    neighbours: list[np.ndarray]
    parent: list[np.ndarray | None]
    children: list[np.ndarray | None]

    @classmethod
    def build(cls, coords, num_downsamples: int) -> "SparseLevels":
        coords = _as_coords(coords)
        levels = cls([coords], [neighbour_index(coords)], [None], [None])
        for _ in range(num_downsamples):
            coarse, parent, children = downsample_index(levels.coords[-1])
            levels.coords.append(coarse)
            levels.neighbours.append(neighbour_index(coarse))
            levels.parent.append(parent)
            levels.children.append(children)
        return levels


def level_names(num_downsamples: int) -> list[str]:
    """Names of the sparse flow graph's index inputs, in graph order."""
    names = []
    for level in range(num_downsamples + 1):
        names.append(f"neighbours_{level}")
        if level:
            names += [f"children_{level}", f"parent_{level}"]
    names.append(f"coords_{num_downsamples}")
    return names


def level_index_maps(coords, num_downsamples: int) -> dict[str, np.ndarray]:
    """The flow graph's index inputs (int64 arrays by name) for voxels `coords`."""
    levels = SparseLevels.build(coords, num_downsamples)
    out = {}
    for level, c in enumerate(levels.coords):
        out[f"coords_{level}"] = c
        out[f"neighbours_{level}"] = levels.neighbours[level]
        if level:
            out[f"parent_{level}"] = levels.parent[level]
            out[f"children_{level}"] = levels.children[level]
    return {name: np.ascontiguousarray(out[name], dtype=np.int64) for name in level_names(num_downsamples)}


def subdivision_maps(coords, levels: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fine coords after `levels` subdivisions and the mesh decoder's maps [parent_1, neighbours_1, ...]."""
    coords = _as_coords(coords)
    maps = []
    for _ in range(levels):
        coords, parent = subdivide_coords(coords)
        maps += [parent, neighbour_index(coords)]
    return np.asarray(coords), maps


def window_partition(coords, window: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """The Swin windows of a voxel set (window id = floor((coord + shift) / window)) as gathers.

    Returns (gather [W, M], slot [N]): row w of `gather` lists the voxels of window w (rows into
    the N voxels, ascending), padded with N (the graph appends one zero row at N, and a key is
    valid where gather < N); slot[i] = w * M + position of voxel i in its window, to read each
    voxel's result back from the flattened [W * M] window outputs.  W windows of at most M voxels
    make attention cost W M^2 instead of N^2.
    """
    coords = _as_coords(coords)
    n = len(coords)
    if n == 0:
        return np.zeros((0, 1), np.int64), np.zeros(0, np.int64)
    ids = np.floor_divide(coords + int(shift), int(window))
    _, window_of, counts = np.unique(ids, axis=0, return_inverse=True, return_counts=True)
    window_of = window_of.reshape(-1)
    order = np.argsort(window_of, kind="stable")  # voxels grouped by window, ascending within
    starts = np.cumsum(counts) - counts
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - starts[window_of[order]]
    width = int(counts.max())
    gather = np.full((len(counts), width), n, np.int64)
    gather[window_of, rank] = np.arange(n)
    return gather, (window_of * width + rank).astype(np.int64)


def window_shifts(window: int, num_blocks: int) -> list[int]:
    """The distinct window shifts of the decoders' Swin blocks: 0 in even blocks, window/2 in odd."""
    return sorted({(window // 2) * (i % 2) for i in range(num_blocks)})


def window_names(num_shifts: int) -> list[str]:
    """Names of a decoder graph's window inputs, in graph order."""
    return [f"window_{kind}_{k}" for k in range(num_shifts) for kind in ("gather", "slot")]


def decoder_window_maps(coords, window: int, shifts) -> dict[str, np.ndarray]:
    """A decoder graph's window inputs (int64 arrays by name) for voxels `coords`."""
    out = {}
    for k, shift in enumerate(shifts):
        out[f"window_gather_{k}"], out[f"window_slot_{k}"] = window_partition(coords, window, shift)
    return out
