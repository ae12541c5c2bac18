"""`sam3d average`: a weight average of a trained checkpoint and the shipped model it started from.

Why: a run that goes on from a shipped model (`train --init models/NAME`) on a new data set of
fewer samples than the shipped model saw drifts towards that set and forgets part of the old one
(README: "The model" has the measurements).  Both networks sit in one basin (same start, same
latent space), so the mean of their weights keeps what each learned.  Only the condition encoder
and the flow are averaged; the structure VAE, the latent normalisation and the pose statistics
must be the same in both (they stay fixed under `--init`), else the two flows live in different
latent spaces and the command refuses.

`--parts` averages only some of them and keeps the rest as the other model has them: what a short
run on one new seed adds to the shape sits in the condition encoder and the flow's shape-side
weights, while its pose stream and the time conditioning shared by both streams move the depth
the flow picks (README: "The model", 0.3.5).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..errors import InputError
from ..nn.checkpoint import load_checkpoint, save_checkpoint

AVERAGED = ("condition_encoder", "generator")
MUST_MATCH = ("decoder", "encoder")
# The shipped graphs store large weights rounded to float16 (export), so a rebuilt model and the
# checkpoint it was exported from differ by up to half a float16 step; more means another VAE.
MATCH_TOL = 1e-2
# The parts `--parts` names: the condition encoder, and the flow's parameters by what reads them.
PARTS = ("encoder", "layout", "shape", "pose", "time")
SHAPE_MODALITY = "shape"
POSE_MODALITIES = ("6drotation_normalized", "translation", "scale", "translation_scale")


def flow_part(name: str) -> str:
    """Which part of the flow a parameter belongs to: its condition layout read, its shape or pose
    stream (the MoT's per-modality weights), or the time conditioning both streams share."""
    fields = name.split(".")
    if fields[0] == "condition_layout":
        return "layout"
    if fields[0] in ("t_embedder", "d_embedder") or "adaLN_modulation" in fields:
        return "time"
    if SHAPE_MODALITY in fields:
        return "shape"
    if any(m in fields for m in POSE_MODALITIES):
        return "pose"
    raise InputError(f"Cannot tell which part of the flow '{name}' belongs to; average it whole (--parts all).")


def parse_parts(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if names == ("all",):
        return PARTS
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise InputError(f"--parts takes 'all' or some of {', '.join(PARTS)}; got '{text}'.")
    return names


def _reference(path: Path):
    """(bundle, checkpoint-like facts) of a model folder (rebuilt from its graphs) or a checkpoint."""
    if path.is_dir():
        from ..contract import load_card
        from ..nn.bundle import build_models
        from ..nn.recover import recover_modules

        card = load_card(path)
        bundle = build_models(card.data.get("architecture", {}).get("config", "tiny"))
        recover_modules(card.path, bundle)
        return bundle, {"latent_mean": list(card.latent_mean), "latent_std": list(card.latent_std),
                        "pose_stats": dict(card.data.get("pose", {})), "name": f"{card.name} {card.version}"}
    bundle, checkpoint = load_checkpoint(path)
    return bundle, {"latent_mean": checkpoint["latent_mean"], "latent_std": checkpoint["latent_std"],
                    "pose_stats": checkpoint["pose_stats"], "name": str(path)}


def _stat_gap(mine: dict, theirs: dict) -> float:
    """Largest difference between two sets of normalisation statistics (lists of numbers by key)."""
    gaps = [abs(float(a) - float(b)) for key, values in mine.items() if isinstance(values, (list, tuple))
            for a, b in zip(values, theirs.get(key, [float("inf")] * len(values)))]
    return max(gaps, default=0.0)


def average_checkpoint(checkpoint_path, other, weight: float, out_path, parts=PARTS) -> Path:
    """Write `weight` * checkpoint + (1 - weight) * other to out_path for the named parts of the
    condition encoder and flow; the other parts are the other model's."""
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"--weight must be in [0, 1], got {weight}.")
    parts = tuple(parts)
    bundle, checkpoint = load_checkpoint(checkpoint_path)
    other_bundle, other_facts = _reference(Path(other))
    if other_bundle.config.name != bundle.config.name:
        raise InputError(f"{other} is a '{other_bundle.config.name}' model, {checkpoint_path} a '{bundle.config.name}' one.")
    for name in MUST_MATCH:
        mine, theirs = getattr(bundle, name).state_dict(), getattr(other_bundle, name).state_dict()
        gap = max(float((mine[k].float() - theirs[k].float()).abs().max()) for k in mine)
        if gap > MATCH_TOL:
            raise InputError(f"{checkpoint_path} and {other} have different structure VAEs ({name} differs by "
                             f"{gap:.3g}); only a run that went on from {other} (train --init) can be averaged with it.")
    latent = {key: checkpoint[key] for key in ("latent_mean", "latent_std")}
    if _stat_gap(latent, other_facts) > 1e-4:
        raise InputError(f"{checkpoint_path} and {other} normalise the latent differently; they cannot be averaged.")
    if _stat_gap(checkpoint["pose_stats"], other_facts["pose_stats"]) > 1e-4:
        raise InputError(f"{checkpoint_path} and {other} normalise the pose differently; they cannot be averaged.")

    def share(module_name: str, key: str) -> float:
        if set(parts) == set(PARTS):  # everything: no need to name each parameter's part
            return weight
        part = "encoder" if module_name == "condition_encoder" else flow_part(key)
        return weight if part in parts else 0.0

    with torch.no_grad():
        for name in AVERAGED:
            module, other_state = getattr(bundle, name), getattr(other_bundle, name).state_dict()
            mixed = {}
            for k, v in module.state_dict().items():
                w = share(name, k)
                mixed[k] = (w * v + (1.0 - w) * other_state[k]) if v.is_floating_point() else v
            module.load_state_dict(mixed)
    meta = dict(checkpoint["meta"])
    meta["weight_average"] = {"checkpoint": str(checkpoint_path), "checkpoint_weight": weight,
                              "other": other_facts["name"], "averaged": list(AVERAGED), "parts": list(parts)}
    if "weight_average" in checkpoint["meta"]:  # an average of an average: keep the chain
        meta["weight_average"]["checkpoint_was"] = checkpoint["meta"]["weight_average"]
    return save_checkpoint(out_path, bundle, latent_mean=checkpoint["latent_mean"], latent_std=checkpoint["latent_std"],
                           pose_stats=checkpoint["pose_stats"], sampler=checkpoint["sampler"],
                           camera=checkpoint["camera"], meta=meta)


def add_average_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model.pt of a run that went on from --with (train --init)")
    parser.add_argument("--with", dest="other", required=True, metavar="MODEL",
                        help="the model it started from: a model folder (models/tiny) or a model.pt")
    parser.add_argument("--weight", type=float, default=0.5, help="the checkpoint's share (default 0.5)")
    parser.add_argument("--out", required=True, help="the averaged model.pt to write")
    parser.add_argument("--parts", default="all", metavar="PARTS",
                        help="what to average, the rest kept as --with has it: 'all' (default) or some of "
                             "encoder,layout,shape,pose,time (the condition encoder; the flow's condition layout read, "
                             "shape stream, pose stream, and the time conditioning both streams share)")


def average_main(args) -> int:
    parts = parse_parts(args.parts)  # before any work: a bad --parts changes nothing
    path = average_checkpoint(args.checkpoint, args.other, args.weight, args.out, parts=parts)
    print(f"average: wrote {path} ({args.weight:g} x {args.checkpoint} + {1 - args.weight:g} x {args.other})",
          file=sys.stderr)
    return 0
