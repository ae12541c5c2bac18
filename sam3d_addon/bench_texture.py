"""`sam3d bench texture`: the texture & refinement stage against the held-out synthetic split.

The stage is given each held-out object's ground-truth 32^3 occupancy and its photo and mask
(so the geometry model's errors do not enter; this measures the second stage alone), and:

* colour: its refined, coloured mesh is rendered unlit (`texture.render`) from the data engine's
  4 novel views (azimuth 45/135/225/315, elevation 25, 64 px) and compared with the engine's
  ground-truth albedo renders by PSNR (over the pixels either image covers) and SSIM
  (scikit-image, whole frame), both composited over white (the renders 4x supersampled and
  box-filtered like the engine's views, so edges do not dominate the score).  Side by side, on the *same mesh*:
  `baseline` paints it with the mean colour of the masked photo pixels; `model_photo` adds the
  visible-side photo projection (the pipeline's `photo_projection` option) with the true pose.
* geometry: F1@0.01 (and Chamfer, squared, both directions) of the coarse mesh (marching cubes
  of the occupancy) and of the refined mesh against the ground-truth mesh, all three in the
  ground-truth mesh's [-1, 1] frame (one common normalisation, so a refined surface that sits
  closer to the truth scores higher).  0.01 there is a sixth of a 32^3 voxel: F1@0.01 rewards
  sub-voxel placement only, Chamfer also counts surface that is far off.
* memory: peak RSS of a fresh process that loads the stage and runs it (mesh and Gaussians) on
  an object with >= 20,000 active voxels (`peak_rss_mb`; `rss_before_stage_mb` is the same
  process before the stage was created: Python, NumPy and ONNX Runtime themselves).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .errors import InputError

DEFAULT_DATA = Path("data/tex")
QUICK_SAMPLES = 8
F1_THRESHOLD = 0.01  # [-1, 1] frame, as the paper's F1@0.01
N_POINTS = 4096
RSS_VOXELS = 20_000
BACKGROUND = 1.0
SUPERSAMPLE = 4  # renders at 4x and box-filters down: the engine's views are box-filtered too


def load_texture_test_samples(data_dir, limit: int | None) -> list[dict]:
    from .data.dataset import list_samples, load_sample

    paths = list_samples(Path(data_dir), "test")
    if not paths:
        raise InputError(f"No held-out samples in {data_dir}/test; generate them with `sam3d data --texture`.")
    paths = paths[:limit] if limit else paths
    samples = [load_sample(p) for p in paths]
    missing = [str(p) for p, s in zip(paths, samples) if "tex_views_albedo" not in s]
    if missing:
        raise InputError(f"{missing[0]} has no texture ground truth; generate data with `sam3d data --texture`.")
    return samples


def _composite(rgb, alpha):
    return rgb * alpha[..., None] + BACKGROUND * (1.0 - alpha[..., None])


def view_scores(sample: dict, vertices, faces, colors, views=range(4)) -> dict:
    """Mean PSNR / SSIM over the novel views of one coloured canonical mesh."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from .texture.render import render_canonical_mesh

    psnr, ssim = [], []
    for v in views:
        gt_alpha = sample["tex_views_alpha"][v].astype(np.float64) / 255.0
        gt = _composite(sample["tex_views_albedo"][v].astype(np.float64) / 255.0, gt_alpha)
        size, k = gt.shape[0], SUPERSAMPLE
        rgb, covered = render_canonical_mesh(vertices, faces, colors, sample["object_matrix_world"],
                                             sample["tex_views_camera"][v], float(sample["fov_deg"]), k * size, k * size)
        pred = _composite(np.clip(rgb, 0.0, 1.0), covered.astype(np.float64))
        pred = pred.reshape(size, k, size, k, 3).mean(axis=(1, 3))  # box filter, as the engine's views
        region = (gt_alpha > 0) | covered.reshape(size, k, size, k).any(axis=(1, 3))
        if region.any():
            psnr.append(peak_signal_noise_ratio(gt[region], pred[region], data_range=1.0))
        ssim.append(structural_similarity(gt, pred, channel_axis=2, data_range=1.0))
    return {"psnr": float(np.mean(psnr)) if psnr else 0.0, "ssim": float(np.mean(ssim))}


def _surface_scores(points_surface, gt_distance, centre, factor, vertices, faces, seed) -> tuple[float, float]:
    """(F1@0.01, Chamfer) of a canonical mesh against the ground truth, in the GT's [-1, 1] frame."""
    from . import metrics as M

    if len(faces) == 0:
        return 0.0, float("nan")
    pred_points = (M.surface_points_from_mesh(vertices, faces, N_POINTS, seed) - centre) * factor
    pred_to_gt = gt_distance(pred_points)
    pred_distance = M.MeshDistance((np.asarray(vertices, np.float64) - centre) * factor, faces, refine=False)
    gt_to_pred = pred_distance(points_surface)
    return (M.f1_from_distances(pred_to_gt, gt_to_pred, F1_THRESHOLD),
            M.chamfer_from_distances(pred_to_gt, gt_to_pred))


def evaluate_sample(stage, sample: dict, seed: int = 0, steps: int | None = None) -> dict:
    from . import metrics as M
    from .preprocess import prepare_inputs
    from .texture.bake import mean_mask_color, photo_vertex_colors

    occupancy = np.asarray(sample["occupancy"], bool)
    card = stage.card
    inputs = prepare_inputs(sample["rgb"], sample["mask"], card.input_size, card.crop_box_factor)
    t0 = time.perf_counter()
    res = stage.run(occupancy, inputs, output="mesh", seed=seed, steps=steps)
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "voxels": int(len(res.coords))}
    verts, faces, colors = res.vertices, res.faces, res.colors

    mean_color = mean_mask_color(sample["rgb"], sample["mask"])
    out["model"] = view_scores(sample, verts, faces, colors)
    out["baseline"] = view_scores(sample, verts, faces, np.broadcast_to(mean_color, colors.shape))
    photo, _ = photo_vertex_colors(verts, faces, sample["rotation"], sample["translation"], sample["scale"],
                                   float(sample["focal_px"]), sample["rgb"], sample["mask"], fallback=colors)
    out["model_photo"] = view_scores(sample, verts, faces, photo)

    # geometry: everything in the GT mesh's [-1, 1] frame
    gt_v, gt_f = M.refine_mesh(sample["vertices"], sample["faces"])
    centre, factor = M.unit_cube_transform(np.asarray(sample["vertices"], np.float64))
    gt_distance = M.MeshDistance((gt_v - centre) * factor, gt_f, refine=False)
    gt_points = (M.surface_points_from_mesh(gt_v, gt_f, N_POINTS, seed) - centre) * factor
    coarse_v, coarse_f = M.occupancy_to_mesh(occupancy)
    out["f1_coarse"], out["chamfer_coarse"] = _surface_scores(gt_points, gt_distance, centre, factor,
                                                              coarse_v, coarse_f, seed + 1)
    out["f1_refined"], out["chamfer_refined"] = _surface_scores(gt_points, gt_distance, centre, factor,
                                                                verts, faces, seed + 2)
    return out


def rss_probe_occupancy(min_voxels: int = RSS_VOXELS, resolution: int = 32, seed: int = 0) -> np.ndarray:
    """A deterministic occupancy with at least `min_voxels` surface voxels: random cells, 70 % full,
    in the smallest corner cube that holds enough (a sponge: a solid's surface at 32^3 has at
    most ~6k voxels; 70 % random cells are ~62 % surface, so 32^3 gives ~20.3k)."""
    from .texture.voxels import surface_voxel_coords

    rng = np.random.default_rng(seed)
    cells = rng.random((resolution,) * 3) < 0.7
    for side in range(4, resolution + 1):
        occ = np.zeros_like(cells)
        occ[:side, :side, :side] = cells[:side, :side, :side]
        if len(surface_voxel_coords(occ)) >= min_voxels:
            return occ
    raise ValueError(f"cannot reach {min_voxels} surface voxels on a {resolution}^3 grid")


def _rss_mb(key: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident set, MB.  Read from /proc rather than
    getrusage: ru_maxrss survives exec, so a child would report its parent's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource  # not Linux: the best there is (macOS reports bytes)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def rss_probe(model: str, steps: int | None, voxels: int = RSS_VOXELS) -> dict:
    """Run in a fresh process (`python -m sam3d_addon.bench_texture --rss-probe`): the stage's
    peak RSS on a large object, with mesh and Gaussian decoding."""
    import onnxruntime  # noqa: F401  (counted in the 'before' figure)

    from .texture.stage import TextureStage

    before = _rss_mb()
    stage = TextureStage(model, device="cpu")
    size = int(stage.card.input_size)
    rng = np.random.default_rng(0)
    inputs = {k: rng.random((1, 3, size, size)).astype(np.float32) for k in ("image", "rgb_image")}
    inputs.update({k: np.ones((1, 1, size, size), np.float32) for k in ("mask", "rgb_image_mask")})
    inputs.update({k: np.full((1, 3, size, size), np.nan, np.float32) for k in ("pointmap", "rgb_pointmap")})
    occ = rss_probe_occupancy(voxels, int(stage.grid["resolution"]))
    t0 = time.perf_counter()
    res = stage.run(occ, inputs, output="both", seed=0, steps=steps)
    return {"peak_rss_mb": round(_rss_mb(), 1), "rss_before_stage_mb": round(before, 1),
            "voxels": int(len(res.coords)), "faces": int(len(res.faces)),
            "gaussians": int(len(res.gaussians["xyz"])), "steps": int(steps or stage.card.sampler["steps"]),
            "seconds": round(time.perf_counter() - t0, 2)}


def run_rss_probe(model: str, steps: int | None, voxels: int = RSS_VOXELS) -> dict:
    cmd = [sys.executable, "-m", "sam3d_addon.bench_texture", "--rss-probe", "--model", str(model),
           "--voxels", str(voxels)]
    if steps:
        cmd += ["--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"texture RSS probe failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_texture(model: str = "tiny-texture", data_dir=None, quick: bool = False, limit: int | None = None,
                  steps: int | None = None) -> dict:
    from .texture.stage import TextureStage

    samples = load_texture_test_samples(data_dir or DEFAULT_DATA, QUICK_SAMPLES if quick else limit)
    stage = TextureStage(model, device="cpu")
    rows = []
    for i, sample in enumerate(samples):
        rows.append(evaluate_sample(stage, sample, seed=i, steps=steps))
        print(f"bench texture: {i + 1}/{len(samples)} psnr model {rows[-1]['model']['psnr']:.2f} "
              f"baseline {rows[-1]['baseline']['psnr']:.2f}", file=sys.stderr)
    stage.release()
    report = {}
    for key in ("model", "baseline", "model_photo"):
        report[key] = {m: round(float(np.mean([r[key][m] for r in rows])), 4) for m in ("psnr", "ssim")}
    for key in ("f1_coarse", "f1_refined", "chamfer_coarse", "chamfer_refined"):
        report[key] = round(float(np.mean([r[key] for r in rows])), 4)
    report["seconds_per_object"] = round(float(np.mean([r["seconds"] for r in rows])), 3)
    report["n_samples"] = len(rows)
    report["steps"] = int(steps or stage.card.sampler["steps"])
    # Memory does not depend on the number of sampler steps (each step runs the same graphs);
    # --quick runs the large object with 2 steps to stay within its time budget.
    probe = run_rss_probe(model, 2 if quick else steps)
    report["peak_rss_mb"] = probe.pop("peak_rss_mb")
    report["rss_probe"] = probe
    report["model_name"] = stage.card.name
    return report


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="texture stage peak-RSS probe (used by `sam3d bench texture`)")
    p.add_argument("--rss-probe", action="store_true", required=True)
    p.add_argument("--model", default="tiny-texture")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--voxels", type=int, default=RSS_VOXELS)
    args = p.parse_args(argv)
    print(json.dumps(rss_probe(args.model, args.steps, args.voxels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
