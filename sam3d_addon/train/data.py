"""Training tensors from the synthetic data engine's samples, or from a training pack.

The model inputs come from `sam3d_addon.preprocess.prepare_inputs`, the same function the
runtime uses, so training and inference see identical crops.  Pose targets come from
`sam3d_addon.pose.encode_pose` with statistics of the training split.

Point maps are kept at the point embedder's input size (16 px for `tiny`): the embedder reads
only those pixels (a nearest resize, `nn.condition.resize_nearest`), so sampling them here gives
the encoder the very same input at 1/27 of the memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import list_samples, load_meta, load_sample
from ..errors import InputError
from ..pose import matrix_to_rotation_6d
from ..preprocess import prepare_inputs

IMAGE_KEYS = ("image", "mask", "rgb_image", "rgb_image_mask")
POINT_KEYS = ("pointmap", "rgb_pointmap")


def nearest_rows(in_size: int, out_size: int) -> np.ndarray:
    """The source rows of the point embedder's nearest resize (nn.condition.nearest_indices, in
    float32 as there)."""
    index = np.floor(np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)).astype(np.int64)
    return np.minimum(index, in_size - 1)


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
    points: dict[str, np.ndarray]  # key -> [N, 3, P, P] float16 (NaN = no point), P = point input size
    occupancy: np.ndarray  # [N, R, R, R] bool
    rotation: np.ndarray  # [N, 3, 3]
    translation: np.ndarray  # [N, 3]
    scale: np.ndarray  # [N, 3]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def empty(cls, input_size: int, point_size: int, resolution: int = 32) -> "GeometryArrays":
        return cls(images={k: np.zeros((0, 1, input_size, input_size), np.uint8) for k in IMAGE_KEYS},
                   points={k: np.zeros((0, 3, point_size, point_size), np.float16) for k in POINT_KEYS},
                   occupancy=np.zeros((0,) + (resolution,) * 3, bool), rotation=np.zeros((0, 3, 3)),
                   translation=np.zeros((0, 3)), scale=np.zeros((0, 3)), paths=[])


def load_split(data_dir: str | Path, split: str, input_size: int, limit: int | None = None,
               progress=None, point_size: int | None = None) -> GeometryArrays:
    """A split of a `sam3d data` directory as model inputs (point maps at point_size, default
    input_size)."""
    paths = list_samples(data_dir, split)
    return load_samples(paths[:limit] if limit else paths, input_size, progress, point_size)


def load_samples(paths: list[Path], input_size: int, progress=None, point_size: int | None = None) -> GeometryArrays:
    rows = nearest_rows(input_size, point_size or input_size)
    images = {k: [] for k in IMAGE_KEYS}
    points = {k: [] for k in POINT_KEYS}
    occ, rot, trans, scale = [], [], [], []
    for i, p in enumerate(paths):
        s = load_sample(p)
        inputs = prepare_inputs(s["rgb"], s["mask"], input_size, pointmap=s["pointmap"])
        for k in IMAGE_KEYS:
            images[k].append(np.clip(inputs[k][0] * 255.0 + 0.5, 0, 255).astype(np.uint8))
        for k in POINT_KEYS:
            points[k].append(inputs[k][0][:, rows][:, :, rows].astype(np.float16))
        occ.append(s["occupancy"])
        rot.append(s["rotation"])
        trans.append(s["translation"])
        scale.append(s["scale"])
        if progress:
            progress(i + 1, len(paths))
    if not paths:
        return GeometryArrays.empty(input_size, point_size or input_size)
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


class _DataSource:
    """One place `sam3d train` reads samples from: a `sam3d data` directory, or a training pack
    made from one (`sam3d pack`, see train/pack.py), which needs neither Blender's output files
    nor the preprocessing at load time."""

    def __init__(self, path: str | Path):
        from . import pack

        self.path = Path(path)
        self.pack = pack.read_pack_info(self.path) if pack.is_pack(self.path) else None
        if self.pack is None and not (self.path / "train").is_dir():
            raise InputError(f"{self.path} has no train/ split; generate data with `sam3d data --out {self.path} --n N`.")
        if self.pack is not None:
            self.meta = self.pack.get("data_meta", {})
        else:
            try:
                self.meta = load_meta(self.path)
            except InputError:  # a run still generating has no meta.json yet
                self.meta = {}

    def load(self, split: str, input_size: int, point_size: int, limit: int | None = None,
             progress=None) -> GeometryArrays:
        if self.pack is None:
            return load_split(self.path, split, input_size, limit=limit, progress=progress, point_size=point_size)
        from .pack import load_pack_split

        return load_pack_split(self.path, split, input_size, point_size, limit=limit)

    def fov_deg(self) -> float:
        if self.pack is not None:
            return float(self.pack["fov_deg"])
        paths = list_samples(self.path, "train")
        if not paths:
            raise InputError(f"{self.path}/train holds no samples yet.")
        return float(load_sample(paths[0])["fov_deg"])

    def source(self) -> str:
        if self.pack is not None:
            return self.pack.get("source", str(self.path))
        return str(self.path)


def concatenate_arrays(parts: list[GeometryArrays]) -> GeometryArrays:
    """Several data sets' arrays as one, in order (their grids must share a resolution)."""
    parts = [p for p in parts if len(p)] or parts[:1]
    if len(parts) == 1:
        return parts[0]
    shapes = {p.occupancy.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise InputError(f"The data sets' occupancy grids differ ({', '.join(str(s[0]) + '³' for s in sorted(shapes))}); "
                         "train on data of one resolution.")
    return GeometryArrays(
        images={k: np.concatenate([p.images[k] for p in parts]) for k in parts[0].images},
        points={k: np.concatenate([p.points[k] for p in parts]) for k in parts[0].points},
        occupancy=np.concatenate([p.occupancy for p in parts]),
        rotation=np.concatenate([p.rotation for p in parts]),
        translation=np.concatenate([p.translation for p in parts]),
        scale=np.concatenate([p.scale for p in parts]),
        paths=[q for p in parts for q in p.paths],
    )


class TrainingData:
    """Where `sam3d train` reads its samples: one or more `sam3d data` directories or training
    packs (`--data` repeated), read in order as one set.  Several at once let a run see every
    seed made so far together rather than one after another (a run on one new seed forgets part
    of the old ones; README: "The model")."""

    def __init__(self, paths: str | Path | list):
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise InputError("No --data given.")
        resolved = [Path(p).resolve() for p in paths]
        if len(set(resolved)) < len(resolved):
            raise InputError("The same --data is given twice; each data set counts once.")
        self.sources = [_DataSource(p) for p in paths]  # each checked: a bad --data changes nothing
        if len(self.sources) == 1:
            self.meta = self.sources[0].meta
        else:
            fovs = {round(s.fov_deg(), 4) for s in self.sources}
            if len(fovs) > 1:
                raise InputError(f"The --data sets were rendered with different fields of view "
                                 f"({', '.join(f'{f:g}°' for f in sorted(fovs))}); train on one camera.")
            metas = [s.meta for s in self.sources]
            self.meta = {key: [m.get(key) for m in metas] for key in ("seed", "version")}
            for key in ("n_train", "n_test"):
                if all(isinstance(m.get(key), int) for m in metas):
                    self.meta[key] = sum(m[key] for m in metas)
            for key in ("resolution", "fov_deg"):
                values = [m.get(key) for m in metas]
                if values[0] is not None and all(v == values[0] for v in values):
                    self.meta[key] = values[0]

    def load(self, split: str, input_size: int, point_size: int, limit: int | None = None,
             progress=None) -> GeometryArrays:
        """The split of every source, in order; `limit` counts samples across them."""
        parts = []
        for source in self.sources:
            left = None if not limit else limit - sum(len(p) for p in parts)
            if left is not None and left <= 0:
                break
            parts.append(source.load(split, input_size, point_size, limit=left, progress=progress))
        return concatenate_arrays(parts)

    def fov_deg(self) -> float:
        return self.sources[0].fov_deg()

    def source(self) -> str:
        """What the card's training.data says."""
        return " + ".join(s.source() for s in self.sources)

