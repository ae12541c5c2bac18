"""Training tensors from the synthetic data engine's samples.

The model inputs come from `sam3d_addon.preprocess.prepare_inputs`, the same function the
runtime uses, so training and inference see identical crops.  Pose targets come from
`sam3d_addon.pose.encode_pose` with statistics of the training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import list_samples, load_sample
from ..pose import matrix_to_rotation_6d
from ..preprocess import prepare_inputs

IMAGE_KEYS = ("image", "mask", "rgb_image", "rgb_image_mask")
POINT_KEYS = ("pointmap", "rgb_pointmap")


def condition_tensors(images: dict[str, np.ndarray]) -> dict:
    """Condition-encoder inputs from uint8 image batches (IMAGE_KEYS -> [B, C, S, S]), with no point
    map (all-NaN point inputs, the encoder's "no points" token).  Torch tensors; torch is imported
    here so loading data stays torch-free."""
    import torch

    out = {k: torch.from_numpy(images[k].astype(np.float32) / 255.0) for k in IMAGE_KEYS}
    batch, size = out["image"].shape[0], out["image"].shape[-1]
    out.update({k: torch.full((batch, 3, size, size), float("nan")) for k in POINT_KEYS})
    return out


@dataclass
class GeometryArrays:
    """All samples of a split, stacked.  Images are kept as uint8 to save memory."""

    images: dict[str, np.ndarray]  # key -> [N, C, S, S] uint8 (x255)
    points: dict[str, np.ndarray]  # key -> [N, 3, S, S] float16 (NaN = no point)
    occupancy: np.ndarray  # [N, R, R, R] bool
    rotation: np.ndarray  # [N, 3, 3]
    translation: np.ndarray  # [N, 3]
    scale: np.ndarray  # [N, 3]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def load_split(data_dir: str | Path, split: str, input_size: int, limit: int | None = None,
               progress=None) -> GeometryArrays:
    paths = list_samples(data_dir, split)
    if limit:
        paths = paths[:limit]
    images = {k: [] for k in IMAGE_KEYS}
    points = {k: [] for k in POINT_KEYS}
    occ, rot, trans, scale = [], [], [], []
    for i, p in enumerate(paths):
        s = load_sample(p)
        inputs = prepare_inputs(s["rgb"], s["mask"], input_size, pointmap=s["pointmap"])
        for k in IMAGE_KEYS:
            images[k].append(np.clip(inputs[k][0] * 255.0 + 0.5, 0, 255).astype(np.uint8))
        for k in POINT_KEYS:
            points[k].append(inputs[k][0].astype(np.float16))
        occ.append(s["occupancy"])
        rot.append(s["rotation"])
        trans.append(s["translation"])
        scale.append(s["scale"])
        if progress:
            progress(i + 1, len(paths))
    return GeometryArrays(
        images={k: np.stack(v) for k, v in images.items()},
        points={k: np.stack(v) for k, v in points.items()},
        occupancy=np.stack(occ).astype(bool),
        rotation=np.stack(rot).astype(np.float64),
        translation=np.stack(trans).astype(np.float64),
        scale=np.stack(scale).astype(np.float64),
        paths=[str(p) for p in paths],
    )


def pose_statistics(arrays: GeometryArrays) -> dict[str, list[float]]:
    """Per-channel mean/std of the pose targets (the card's "pose" section)."""
    r6 = matrix_to_rotation_6d(arrays.rotation)
    log_s = np.log(arrays.scale)
    stats = {}
    for key, values in (("rotation", r6), ("log_scale", log_s), ("translation", arrays.translation)):
        stats[f"{key}_mean"] = values.mean(axis=0).tolist()
        stats[f"{key}_std"] = np.maximum(values.std(axis=0), 1e-3).tolist()
    return stats
