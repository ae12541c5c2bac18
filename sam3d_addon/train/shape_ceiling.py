"""A diagnostic, not a model we ship: how much canonical shape can a plain CNN read from the crop?

The geometry issue's calibration says a plain CNN regressor reached voxel IoU 0.54 on "a similar
procedural task" where an ellipsoid scored 0.48.  On our data engine's objects the ellipsoid
baseline scores 0.26 and the tiny ViT's cross-attention regression probe 0.21 (the encoder stage
of model 0.1.0; 0.2.0's layout-read probe reaches 0.38),
so before spending more CPU hours on the flow it is worth knowing where a plain CNN lands on
*our* data, with the same target (the run's VAE latent, decoded by its frozen decoder), the same
training split and the same held-out samples as the probe.

    python -m sam3d_addon.train.shape_ceiling --run runs/tiny2 --data data/synth --minutes 12

`--head attention` reads the CNN's features with the probe's cross-attention head instead of a
flatten head; `--encoder vit` puts the tiny model's own condition encoder under the flatten head.
Prints one JSON object: held-out and training voxel IoU of the model (`model_*`; earlier runs
called it `cnn_*`), of the data set's mean latent
and of the best constant occupancy (the per-voxel mean of the training shapes, thresholded), with
the steps and seconds used.  Torch only; nothing here is on the inference path.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..nn.bundle import build_models
from ..nn.condition import EmbedderFuser
from ..nn.vae import grid_to_tokens, tokens_to_grid
from .data import condition_tensors, load_split
from .loop import photometric_jitter


def _flatten_head(features: int, tokens: int, channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(features, 512), nn.SiLU(),
                         nn.Linear(512, tokens * channels))


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.SiLU())


class CropCNN(nn.Module):
    """Object crop (RGB + mask, 84 px) -> the shape latent's tokens [B, T, C] (normalised).

    head="flatten": the 6x6 feature map, flattened, through an MLP (a plain regressor).
    head="attention": the 36 feature vectors as tokens (plus a learned position embedding) read by
    the geometry recipe's own `ConditionProbe` (learned queries, one cross-attention): the same
    head as the ViT's probe, so the two runs separate the encoder's share from the head's."""

    def __init__(self, tokens: int, channels: int, width: int = 32, head: str = "flatten", cond_channels: int = 128):
        super().__init__()
        w = width
        self.features = nn.Sequential(_block(4, w, 1), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2),
                                      _block(4 * w, 6 * w, 2), _block(6 * w, 8 * w, 2))  # 84 -> 6
        self.head_kind = head
        if head == "flatten":
            self.head = _flatten_head(8 * w * 36, tokens, channels)
        elif head == "attention":
            from .loop import ConditionProbe

            self.to_tokens = nn.Linear(8 * w, cond_channels)
            self.position = nn.Parameter(torch.randn(1, 36, cond_channels) * 0.02)
            self.head = ConditionProbe(cond_channels, tokens, channels, pose_dims=1)
        else:
            raise ValueError(f"unknown head {head!r}")
        self.tokens, self.channels = tokens, channels

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.features(torch.cat([image, mask], dim=1))
        if self.head_kind == "attention":
            return self.head(self.to_tokens(h.flatten(2).transpose(1, 2)) + self.position)[0]
        return self.head(h).view(-1, self.tokens, self.channels)


class EncoderRegressor(nn.Module):
    """The tiny model's own condition encoder (freshly initialised, as in `sam3d train`'s encoder
    stage) with its tokens read by the CNN's flatten head: with `CropCNN` it separates the
    encoder's share of the lost shape from the head's."""

    def __init__(self, encoder: nn.Module, n_tokens: int, cond_channels: int, tokens: int, channels: int):
        super().__init__()
        self.encoder = encoder
        self.head = _flatten_head(n_tokens * cond_channels, tokens, channels)
        self.tokens, self.channels = tokens, channels

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.encoder(**inputs)).view(-1, self.tokens, self.channels)


def _condition(arrays, idx) -> dict[str, torch.Tensor]:
    """The condition encoder's inputs, without a point map (the CNN sees none either)."""
    return condition_tensors({k: v[idx] for k, v in arrays.images.items()})


def _images(arrays, idx) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.from_numpy(arrays.images["image"][idx].astype(np.float32) / 255.0)
    mask = torch.from_numpy(arrays.images["mask"][idx].astype(np.float32) / 255.0)
    return image, mask


def voxel_iou(pred: np.ndarray, occ: np.ndarray) -> float:
    """Mean voxel IoU over a batch of grids [B, R, R, R]."""
    return float(np.mean([metrics.voxel_iou(p, o) for p, o in zip(pred, occ)]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a `sam3d train` run whose VAE (state.pt) gives the target")
    p.add_argument("--data", type=Path, default=Path("data/synth"))
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, default=None, help="training samples (default: all)")
    p.add_argument("--test", type=int, default=64, help="held-out samples (the probe uses 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head", choices=("flatten", "attention"), default="flatten",
                   help="attention: the ViT probe's own head over the CNN's 6x6 feature tokens")
    p.add_argument("--encoder", choices=("cnn", "vit"), default="cnn",
                   help="vit: the tiny model's own condition encoder (fresh) under the flatten head")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="photometric jitter strength on the training images (train.loop.photometric_jitter)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (to run two arms side by side)")
    p.add_argument("--input-size", type=int, default=None,
                   help="with --encoder vit: the ViT's input size (a multiple of its 14 px patch; default the preset's 84)")
    p.add_argument("--steps", type=int, default=None,
                   help="a fixed step count instead of fitting the schedule to --minutes (to compare arms of unequal speed)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    saved = torch.load(args.run / "state.pt", map_location="cpu", weights_only=False)
    bundle = build_models("tiny")
    bundle.encoder.load_state_dict(saved["modules"]["encoder"])
    bundle.decoder.load_state_dict(saved["modules"]["decoder"])
    bundle.encoder.eval(), bundle.decoder.eval()
    mean, std = torch.tensor(saved["latent_mean"]), torch.tensor(saved["latent_std"])
    res = bundle.config.vae.latent_resolution

    rng = np.random.default_rng(args.seed)
    condition_config = bundle.config.condition
    if args.input_size:
        if args.encoder != "vit" or args.input_size % condition_config.vit.patch_size:
            raise SystemExit(f"--input-size needs --encoder vit and a multiple of {condition_config.vit.patch_size}")
        condition_config = replace(condition_config, vit=replace(condition_config.vit, input_size=args.input_size))
    size = condition_config.vit.input_size
    t0 = time.time()
    train = load_split(args.data, "train", size, limit=args.limit)
    test = load_split(args.data, "test", size, limit=args.test)
    print(f"shape-ceiling: {len(train)} train / {len(test)} held-out samples in {time.time() - t0:.0f} s", file=sys.stderr)

    @torch.no_grad()
    def encode(occupancy: np.ndarray) -> torch.Tensor:
        lat = torch.cat([grid_to_tokens(bundle.encoder(torch.from_numpy(occupancy[i:i + 128].astype(np.float32))[:, None])[0])
                         for i in range(0, len(occupancy), 128)])
        return (lat - mean) / std

    target, test_target = encode(train.occupancy), encode(test.occupancy)

    @torch.no_grad()
    def decode(tokens_normalised: torch.Tensor) -> np.ndarray:
        grid = tokens_to_grid(tokens_normalised * std + mean, res)
        return (bundle.decoder(grid)[:, 0] > 0).numpy()

    if args.encoder == "vit":
        encoder = EmbedderFuser(condition_config).train()
        with torch.no_grad():
            n_tokens = encoder(**_condition(train, np.arange(1))).shape[1]
        model = EncoderRegressor(encoder, n_tokens, bundle.config.condition.cond_channels, target.shape[1], target.shape[2])

        def predict(arrays, idx, jitter=0.0):
            return model(photometric_jitter(_condition(arrays, idx), jitter, rng))
    else:
        model = CropCNN(target.shape[1], target.shape[2], head=args.head,
                        cond_channels=bundle.config.condition.cond_channels)

        def predict(arrays, idx, jitter=0.0):
            image, mask = _images(arrays, idx)
            return model(photometric_jitter({"image": image}, jitter, rng)["image"], mask)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    budget, step, total, t0 = args.minutes * 60.0, 0, args.steps, time.time()
    while total is None or step < total:
        if total is None and step == 20:  # fit a cosine schedule to the time budget
            total = max(21, int(budget / ((time.time() - t0) / 20)))
        warm = total is None or step < 20
        lr = args.lr * (min(1.0, (step + 1) / 100) if warm else 0.5 * (1 + math.cos(math.pi * step / total)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, len(train), args.batch)
        loss = F.mse_loss(predict(train, idx, args.jitter), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"shape-ceiling: step {step}/{total} loss {loss.item():.4f}", file=sys.stderr, flush=True)

    model.eval()
    with torch.no_grad():
        pred_test = torch.cat([predict(test, np.arange(i, min(i + 64, len(test)))) for i in range(0, len(test), 64)])
        seen = np.arange(min(len(train), len(test)))
        pred_train = predict(train, seen)
    mean_shape = train.occupancy.mean(axis=0)
    constant = max((voxel_iou(np.broadcast_to(mean_shape > th, test.occupancy.shape), test.occupancy), th)
                   for th in (0.1, 0.2, 0.3, 0.4, 0.5))
    report = {
        "model_heldout_viou": round(voxel_iou(decode(pred_test), test.occupancy), 4),
        "model_train_viou": round(voxel_iou(decode(pred_train), train.occupancy[seen]), 4),
        "model_heldout_latent_mse": round(F.mse_loss(pred_test, test_target).item(), 4),
        "vae_heldout_viou": round(voxel_iou(decode(test_target), test.occupancy), 4),
        "mean_latent_heldout_viou": round(voxel_iou(decode(torch.zeros(len(test), *target.shape[1:])), test.occupancy), 4),
        "mean_occupancy_heldout_viou": round(constant[0], 4), "mean_occupancy_threshold": constant[1],
        "steps": step, "seconds": round(time.time() - t0, 1), "train_samples": len(train), "heldout_samples": len(test),
        "run": str(args.run), "head": args.head, "encoder": args.encoder, "jitter": args.jitter,
        "input_size": size,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
