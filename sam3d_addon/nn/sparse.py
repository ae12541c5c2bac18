"""Sparse voxel tensors in an ONNX-exportable form: index maps in NumPy, gathers in the graph.

The official texture stage runs on spconv (`SubMConv3d`) and a hashed sparse tensor; neither
exports to ONNX.  Here a sparse tensor of one object is a plain feature matrix [N, C] (N = active
voxels, a dynamic axis) plus integer index maps that depend only on the voxel coordinates and are
computed *outside* the graph, once per object, in NumPy:

* `neighbour_index(coords)` -> [N, 27]: row of each of the 27 neighbours p + o, o in {-1,0,1}^3
  (x slowest, z fastest: the order of the KRSC kernel W[out, kx, ky, kz, in]), -1 where inactive.
* `downsample_index(coords)` -> coarse coords (floor(c/2), unique, lexicographic), the parent of
  each fine voxel and the up-to-8 children of each coarse voxel (-1 where missing).
* `subdivide_coords(coords)` -> the 8 children 2c + (i,j,k) of every voxel and their parents.

In the graph everything is a gather from the features with one zero row prepended, so index -1
reads zeros:  submanifold conv = gather [N,27,C] -> matmul with W reshaped [out, 27*C];
downsample = sum of the gathered children / (n_children + 1) (the official scatter-mean into a
zero-initialised tensor counts the zero, fact sheet section 4.3); upsample = gather of the parent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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

    def tensors(self, device=None) -> dict[str, torch.Tensor]:
        """Flat, named int64 tensors (the ONNX inputs): neighbours_l, coords_l, parent_l, children_l."""
        out = {}
        for level, coords in enumerate(self.coords):
            out[f"coords_{level}"] = torch.as_tensor(coords, dtype=torch.int64, device=device)
            out[f"neighbours_{level}"] = torch.as_tensor(self.neighbours[level], dtype=torch.int64, device=device)
            if level:
                out[f"parent_{level}"] = torch.as_tensor(self.parent[level], dtype=torch.int64, device=device)
                out[f"children_{level}"] = torch.as_tensor(self.children[level], dtype=torch.int64, device=device)
        return out


# -- graph side ----------------------------------------------------------------------------------

def gather_rows(feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """feats [N, C] gathered at index (any shape, -1 = zeros) -> [*index.shape, C]."""
    padded = torch.cat([feats.new_zeros(1, feats.shape[1]), feats], dim=0)
    return padded[index + 1]


def sparse_downsample(feats: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
    """Official SparseDownsample features: sum of children / (n_children + 1)."""
    count = (children >= 0).sum(dim=1, keepdim=True).to(feats.dtype)
    return gather_rows(feats, children).sum(dim=1) / (count + 1.0)


def sparse_upsample(feats: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """Official SparseUpsample: each fine voxel copies its parent's features."""
    return feats[parent]


class SubMConvKernel(nn.Module):
    """Holds a spconv-layout kernel: weight [out, k, k, k, in] (KRSC) and bias [out]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, kernel_size, kernel_size, kernel_size, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        fan_in = in_channels * kernel_size ** 3
        nn.init.uniform_(self.weight, -fan_in ** -0.5, fan_in ** -0.5)


class SparseConv3d(nn.Module):
    """Submanifold conv (spconv SubMConv3d): out[p] = b + sum over active p+o of W[:, o+1, :] in[p+o].

    Kernel 3 needs the [N, 27] neighbour index of the voxels; kernel 1 is a per-voxel linear map.
    The parameter lives at `<name>.conv.weight` as in the official state dicts.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError("only submanifold kernels of size 1 and 3 are supported")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.conv = SubMConvKernel(in_channels, out_channels, kernel_size)

    def forward(self, feats: torch.Tensor, neighbours: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.conv.weight.reshape(self.out_channels, -1)
        if self.kernel_size == 1:
            return F.linear(feats, weight, self.conv.bias)
        gathered = gather_rows(feats, neighbours).flatten(1)  # [N, 27 * C_in], k-major like W
        return F.linear(gathered, weight, self.conv.bias)


class SparseGroupNorm(nn.GroupNorm):
    """GroupNorm over all voxels of one object (official SparseGroupNorm32, batch of one)."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return super().forward(feats.t()[None])[0].t()
