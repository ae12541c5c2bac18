"""Training checkpoints of the geometry model: one torch.save'd dict.

Keys: "config" (preset name), "condition_encoder", "generator", "decoder", "encoder" (state
dicts), "latent_mean", "latent_std" (per shape-latent channel), "pose_stats" (the card's pose
section), "sampler" (the card's sampler section), "camera" ({"fov_deg": ...}) and "meta" (free-form
training facts, exported as the card's "training" section).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from .bundle import MODULE_NAMES, ModelBundle, build_models

CHECKPOINT_KEYS = ("config",) + MODULE_NAMES + (
    "latent_mean", "latent_std", "pose_stats", "sampler", "camera", "meta"
)


def save_checkpoint(path: str | Path, bundle: ModelBundle, *, latent_mean: list[float], latent_std: list[float],
                    pose_stats: dict[str, Any], sampler: dict[str, Any], camera: dict[str, Any],
                    meta: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"config": bundle.config.name}
    checkpoint.update({name: module.state_dict() for name, module in bundle.modules().items()})
    # These become card sections: a JSON round trip fails now on values the card could not hold
    # (numpy scalars, arrays) and leaves plain types that torch.load(weights_only=True) accepts.
    facts = json.loads(json.dumps({
        "latent_mean": [float(v) for v in latent_mean],
        "latent_std": [float(v) for v in latent_std],
        "pose_stats": dict(pose_stats),
        "sampler": dict(sampler),
        "camera": dict(camera),
        "meta": dict(meta or {}),
    }, allow_nan=False))
    checkpoint.update(facts)
    # Write then rename: an interrupted save never leaves a truncated checkpoint behind.
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[ModelBundle, dict[str, Any]]:
    """Rebuild the networks (eval mode, CPU) and return them with the checkpoint dict."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # missing, cut off, not a checkpoint
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]  # one line
        raise ModelError(f"Cannot read checkpoint {path}: {detail}") from None
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise ModelError(f"Checkpoint {path} lacks {', '.join(missing)}; it was not written by save_checkpoint.")
    bundle = build_models(checkpoint["config"])
    for name, module in bundle.modules().items():
        try:
            module.load_state_dict(checkpoint[name])
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]  # the full key listing can run to pages
            raise ModelError(f"Checkpoint {path}: {name} does not fit config {checkpoint['config']!r}: {detail}") from None
    return bundle.eval_mode(), checkpoint
