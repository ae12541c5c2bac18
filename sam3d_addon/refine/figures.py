"""Before/after picture of the built-in refinement on a benchmark scene, made headless.

`python -m sam3d_addon.refine.figures --out examples/screenshots` renders benchmark scene 0 (the
same scene, perturbation and policy as `sam3d bench refine`) through the photo camera before and
after refinement, with the input masks outlined in red, and writes `refine_before_after.png`.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .bench import CANDIDATES, PERTURB, ROUNDS
from .loop import refine
from .policy_builtin import BuiltinPolicy
from .synthetic import bench_scene, perturb


def _outline(image: Image.Image, masks: dict) -> Image.Image:
    """Draw each mask's boundary in red: where the objects should be."""
    rgb = np.asarray(image.convert("RGB")).copy()
    for m in masks.values():
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(image.size, Image.NEAREST)) > 127
        edge = m & ~ndimage.binary_erosion(m, iterations=2)
        rgb[edge] = (230, 30, 30)
    return Image.fromarray(rgb)


def before_after(out_dir: str | Path, index: int = 0, seed: int = 0, size: int = 480) -> Path:
    from .. import blender_bridge as bridge

    truth = bench_scene(index)
    start = perturb(truth, np.random.default_rng([index, 1]), **PERTURB)
    result = refine(start, BuiltinPolicy(seed=seed + index), rounds=ROUNDS, candidates=CANDIDATES)
    panels = []
    for state in (start, result.state):
        scene = bridge.refine_build_scene(state)
        (_, png), = bridge.refine_render_views(state, scene, size=size, views=("photo_camera",))
        panels.append(_outline(Image.open(io.BytesIO(png)), truth.masks))
    w, h = panels[0].size
    sheet = Image.new("RGB", (2 * w + 8, h), (255, 255, 255))
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (w + 8, 0))
    out = Path(out_dir) / "refine_before_after.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/screenshots")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    print(before_after(args.out, args.index))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
