"""The model contract: what a shipped model directory holds and what the runtime may assume.

A model is a directory under `models/` with a `model.json` card and three ONNX graphs:

* `condition_encoder` -- inputs (all float32, values in [0, 1] for images and masks; the ImageNet
  normalisation happens inside the graph, as the official DINOv2 embedder does):
  `image` [B,3,S,S] object crop, `mask` [B,1,S,S] its mask, `rgb_image` [B,3,S,S] the full photo
  padded to a square, `rgb_image_mask` [B,1,S,S] its mask, `pointmap` [B,3,S,S] and
  `rgb_pointmap` [B,3,S,S] (camera-frame points; NaN marks "no point", an all-NaN map means "no
  point map").  Output: `cond` [B,N,C].
* `velocity` -- the flow network.  Inputs: one tensor per latent modality (`shape` [B,T,Cs],
  `rotation6d` [B,1,6], `translation` [B,1,3], `scale` [B,1,3], `translation_scale` [B,1,1]),
  `t` [B] (scaled time, 1000*t), `d` [B] (scaled shortcut step, 1000*d) and `cond` [B,N,C].
  Outputs: `v_<modality>` with the input shapes.
* `structure_decoder` -- input `shape` [B,T,Cs] (the de-normalised shape latent tokens),
  output `logits` [B,1,R,R,R]; a voxel is occupied where logit > threshold.

Conventions (the official ones, fact sheet section 8/9): noise at t=0, data at t=1; pose is
expressed in the PyTorch3D camera frame (+x left, +y up, +z forward) and a canonical-frame point
p_obj in [-0.5, 0.5]^3 maps to p_cam = R^T (s * p_obj) + t, with R built from the 6D rotation by
Gram-Schmidt with b1, b2, b3 as columns.

This module is the one place that knows the card's layout.  Nothing here imports onnxruntime,
torch or bpy.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError

CONTRACT_NAME = "sam3d-blender/geometry"
CONTRACT_VERSION = 1

STAGES = ("condition_encoder", "velocity", "structure_decoder")

# The texture & refinement stage is a model of its own (a `kind: texture` card), so a geometry
# model can be re-trained without touching it.  Its graphs:
# * `texture_condition_encoder` -- the geometry encoder's inputs (same names), output `cond` (and
#   `albedo` with a "predicted_albedo" colour reference, below).
# * `slat_flow` -- `feats` [1,N,C] latent on the N active voxels, `t` [1], `cond` [1,T,Cc] and
#   the sparse index maps (`nn.slat.level_names`); output `velocity` [1,N,C].
# * `slat_mesh_decoder` -- `feats` [N,C], `coords` [N,3] and the subdivision maps; outputs `sdf`
#   [8N] (fine-voxel units, negative inside) and `rgb` [8N,3] (sRGB in [0,1]) on the 2x grid.
# * `slat_gaussian_decoder` -- `feats`, `coords`; outputs xyz, scales, rotations, opacities,
#   colors [N,G,*] in the canonical frame.
# With `decoders.color_reference: "crop_mean"` in the card, both decoders' colours are relative
# to the prepared crop's mean colour (0.5 = that colour) and the stage turns them into sRGB with
# `texture.reference.absolute_colors`; "none" (or absent) means they are sRGB already.
# With "predicted_albedo" the reference is the encoder's second output, `albedo` [B,3]: the object's
# albedo as the model reads it from the photo (the crop's mean colour, de-lit by a learnt shift).
COLOR_REFERENCE_CROP_MEAN = "crop_mean"  # decoders.color_reference
COLOR_REFERENCE_PREDICTED = "predicted_albedo"
NOISE_CENTRED = "centred_per_channel"  # sampler.noise: start from noise centred over the voxels
TEXTURE_CONTRACT_NAME = "sam3d-blender/texture"
TEXTURE_STAGES = ("texture_condition_encoder", "slat_flow", "slat_mesh_decoder", "slat_gaussian_decoder")
DEFAULT_TEXTURE_MODEL = "tiny-texture"

# Order matters: it is the order of the pose tokens in the flow network (official order).
POSE_MODALITIES = ("rotation6d", "translation", "scale", "translation_scale")
POSE_DIMS = {"rotation6d": 6, "translation": 3, "scale": 3, "translation_scale": 1}
# The most samples a prediction may average (sampler.samples; each is one more batch row).
MAX_SAMPLES = 16
MODALITIES = ("shape",) + POSE_MODALITIES

CONDITION_INPUTS = ("image", "mask", "rgb_image", "rgb_image_mask", "pointmap", "rgb_pointmap")

# Where shipped models live: `models/` next to the package, in the repository and in the
# installed extension alike.
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "tiny"


@dataclass(frozen=True)
class ModelCard:
    """A parsed, validated `model.json`."""

    path: Path  # the model directory
    data: dict[str, Any]

    # -- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def version(self) -> str:
        return self.data["version"]

    def file(self, stage: str) -> Path:
        return self.path / self.data["files"][stage]

    # -- preprocessing ------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        return int(self.data["preprocess"]["input_size"])

    @property
    def crop_box_factor(self) -> float:
        return float(self.data["preprocess"].get("crop_box_factor", 1.2))

    # -- latent / occupancy -----------------------------------------------------------------
    @property
    def shape_tokens(self) -> int:
        return int(self.data["latent"]["shape_tokens"])

    @property
    def shape_channels(self) -> int:
        return int(self.data["latent"]["shape_channels"])

    @property
    def latent_mean(self) -> list[float]:
        return list(self.data["latent"].get("mean", [0.0] * self.shape_channels))

    @property
    def latent_std(self) -> list[float]:
        return list(self.data["latent"].get("std", [1.0] * self.shape_channels))

    @property
    def occupancy_resolution(self) -> int:
        return int(self.data["occupancy"]["resolution"])

    @property
    def occupancy_threshold(self) -> float:
        return float(self.data["occupancy"].get("threshold", 0.0))

    # -- pose, sampler, camera --------------------------------------------------------------
    @property
    def pose(self) -> dict[str, Any]:
        return self.data["pose"]

    @property
    def sampler(self) -> dict[str, Any]:
        return self.data["sampler"]

    @property
    def camera_fov_deg(self) -> float:
        """Field of view (degrees) across the longer image side of the training renders."""
        return float(self.data["camera"]["fov_deg"])

    def io(self, stage: str) -> dict[str, Any]:
        return self.data["io"][stage]

    @property
    def kind(self) -> str:
        return "texture" if self.data.get("contract") == TEXTURE_CONTRACT_NAME else "geometry"

    @property
    def stages(self) -> tuple[str, ...]:
        return TEXTURE_STAGES if self.kind == "texture" else STAGES


def _require(data: dict, key: str, where: str):
    if key not in data:
        raise ModelError(f"model card {where} is missing '{key}'; re-export the model.")
    return data[key]


def parse_card(path: Path, data: dict[str, Any]) -> ModelCard:
    """Validate a card's structure and return it; raises ModelError with one line."""
    where = str(path / "model.json")
    if data.get("contract") == TEXTURE_CONTRACT_NAME:
        return _parse_texture_card(path, data, where)
    if data.get("contract") != CONTRACT_NAME:
        raise ModelError(f"{where} is not a SAM 3D geometry model card (contract={data.get('contract')!r}).")
    version = data.get("contract_version")
    if version != CONTRACT_VERSION:
        raise ModelError(
            f"{where} has contract version {version}, this add-on reads version {CONTRACT_VERSION}; "
            "update the add-on or re-export the model."
        )
    for key in ("name", "version", "files", "io", "preprocess", "latent", "occupancy", "pose", "sampler", "camera"):
        _require(data, key, where)
    for stage in STAGES:
        _require(data["files"], stage, where)
        _require(data["io"], stage, where)
    check_sampler(data["sampler"], where)
    return ModelCard(path=Path(path), data=data)


def is_sample_count(value: Any) -> bool:
    """Whether `value` is a number of samples a prediction may average: a whole number 1..MAX_SAMPLES."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and 1 <= value <= MAX_SAMPLES


def check_sampler(sampler: dict, where: str) -> None:
    """The optional fields of a geometry card's sampler block: `samples` (how many samples a
    prediction averages, 1..MAX_SAMPLES) and `noise_scale` ({latent: factor in (0, 10]})."""
    if not is_sample_count(sampler.get("samples", 1)):
        raise ModelError(f"model card {where}: sampler.samples must be a whole number from 1 to {MAX_SAMPLES}.")
    scale = sampler.get("noise_scale")
    if scale is None:
        return
    latents = ("shape", *POSE_DIMS)
    if not isinstance(scale, dict):
        raise ModelError(f"model card {where}: sampler.noise_scale must map latent names to numbers.")
    for name, factor in scale.items():
        if name not in latents:
            raise ModelError(f"model card {where}: sampler.noise_scale names '{name}', which is not one of "
                             f"{', '.join(latents)}.")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.0 < float(factor) <= 10.0:
            raise ModelError(f"model card {where}: sampler.noise_scale['{name}'] must be a number in (0, 10].")


def _parse_texture_card(path: Path, data: dict[str, Any], where: str) -> ModelCard:
    if data.get("contract_version") != CONTRACT_VERSION:
        raise ModelError(f"{where} has contract version {data.get('contract_version')}, this add-on reads "
                         f"version {CONTRACT_VERSION}; update the add-on or re-export the model.")
    for key in ("name", "version", "files", "io", "preprocess", "latent", "grid", "sampler", "decoders"):
        _require(data, key, where)
    for stage in TEXTURE_STAGES:
        _require(data["files"], stage, where)
        _require(data["io"], stage, where)
    return ModelCard(path=Path(path), data=data)


def load_texture_card(model: str | Path) -> ModelCard:
    """A texture model by name or path; raises ModelError if it is not one."""
    card = load_card(model)
    if card.kind != "texture":
        raise ModelError(f"Model '{card.name}' is a geometry model, not a texture model.")
    return card


def load_card(model: str | Path) -> ModelCard:
    """Find a model by name (a directory under models/) or by path, and read its card."""
    path = Path(model)
    if not path.is_dir():
        candidate = MODELS_DIR / str(model)
        if candidate.is_dir():
            path = candidate
    card_path = path / "model.json"
    if not card_path.is_file():
        available = ", ".join(available_models()) or "none"
        raise ModelError(f"No model '{model}' (no {card_path}); available models: {available}.")
    try:
        data = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"Cannot read {card_path}: {exc}.") from None
    card = parse_card(path, data)
    for stage in card.stages:
        if not card.file(stage).is_file():
            raise ModelError(f"Model '{card.name}' is missing {card.file(stage).name}; reinstall or re-export it.")
    return card


def available_models() -> list[str]:
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model.json").is_file())


def available_geometry_models() -> list[str]:
    """Models the 3Dfy model menu offers (texture models are picked separately)."""
    out = []
    for name in available_models():
        try:
            if json.loads((MODELS_DIR / name / "model.json").read_text()).get("contract") == CONTRACT_NAME:
                out.append(name)
        except (OSError, json.JSONDecodeError):
            continue
    return out
