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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..sparse_index import (  # noqa: F401  (re-exported: the graph side's users import them here)
    CHILD_OFFSETS, KERNEL_OFFSETS, SparseLevels, _as_coords, _linear_keys, downsample_index, neighbour_index,
    subdivide_coords)


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
        # One offset at a time: an [N, 27 * C_in] gather would be the largest tensor of the mesh
        # decoder (over 1 GB for a 20k-voxel object); this keeps the peak at [N, C_in].
        c = self.in_channels
        padded = torch.cat([feats.new_zeros(1, c), feats], dim=0)  # row 0: inactive neighbour
        index = neighbours + 1
        out = F.linear(padded[index[:, 0]], weight[:, :c], self.conv.bias)
        for k in range(1, index.shape[1]):
            out = out + F.linear(padded[index[:, k]], weight[:, k * c:(k + 1) * c])
        return out


class SparseGroupNorm(nn.GroupNorm):
    """GroupNorm over all voxels of one object (official SparseGroupNorm32, batch of one)."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return super().forward(feats.t()[None])[0].t()
