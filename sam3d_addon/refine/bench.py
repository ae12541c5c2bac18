"""`sam3d bench refine`: how well the built-in policy recovers perturbed layouts (NumPy only).

A fixed held-out set of synthetic scenes (`synthetic.bench_scene`, seeded by the scene index
only, so --quick's 24 scenes are the first 24 of the full 64): 3-4 procedural furniture meshes
(chairs, tables, stools, shelves, sofas, cabinets) resting on the ground at collision-free
poses, seen through a photo camera whose pose varies per scene; the masks are the visible
silhouettes at the true poses.  Every object's pose is then perturbed (translation, yaw, scale,
lift) and the refinement loop runs with the built-in policy.

Reported before / after refinement, over all objects of all scenes:

* trans_err_median: median distance between the object's origin (its mesh's bounding-box
  centre) and the true one, metres;
* rot_err_deg_median: median geodesic angle between the estimated and the true rotation
  (scale removed), degrees; plain, *not* symmetry-aware (a table turned by 180 degrees counts
  as 180 degrees off);
* scale_err_pct_median: median |log(estimated / true scale)|, as a percentage;
* collision_free_pct: objects in no colliding pair (the verifier's criterion: intersection
  volume above 1% of the smaller object), percent; collision_free_scenes_pct: scenes with none;
* supported_pct: objects resting on the ground or on another object, percent;
* silhouette_iou: mean over scenes of the mean visible-silhouette IoU against the masks.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .loop import refine
from .policy_builtin import BuiltinPolicy
from .synthetic import bench_scene, perturb
from .verify import verify

QUICK_SCENES = 24
FULL_SCENES = 64
ROUNDS = 3
CANDIDATES = 3
PERTURB = dict(trans_m=0.2, yaw_deg=20.0, log_scale=0.15, lift_m=0.1, sink_m=0.05)  # uniform ranges, per object


def _pose_errors(state, truth) -> tuple[list[float], list[float], list[float]]:
    trans, rot, scale = [], [], []
    for name, gt in truth.objects.items():
        A, B = state.objects[name].matrix_world, gt.matrix_world
        trans.append(float(np.linalg.norm(A[:3, 3] - B[:3, 3])))
        sa, sb = np.linalg.norm(A[:3, :3], axis=0).mean(), np.linalg.norm(B[:3, :3], axis=0).mean()
        Rd = (A[:3, :3] / sa) @ (B[:3, :3] / sb).T
        rot.append(math.degrees(math.acos(min(1.0, max(-1.0, (np.trace(Rd) - 1.0) / 2.0)))))
        scale.append(100.0 * abs(math.log(sa / sb)))
    return trans, rot, scale


class _Tally:
    def __init__(self):
        self.trans, self.rot, self.scale = [], [], []
        self.objects = self.colliding = self.unsupported = 0
        self.clean_scenes = 0
        self.ious = []

    def add(self, state, truth, report) -> None:
        t, r, s = _pose_errors(state, truth)
        self.trans += t
        self.rot += r
        self.scale += s
        n = len(state.objects)
        self.objects += n
        colliding = {a for a, _, _ in report.collisions} | {b for _, b, _ in report.collisions}
        self.colliding += len(colliding)
        self.clean_scenes += int(not colliding)
        self.unsupported += len(report.unsupported)
        if report.iou_mean is not None:
            self.ious.append(report.iou_mean)

    def to_json(self, scenes: int) -> dict:
        n = max(self.objects, 1)
        return {
            "trans_err_median": round(float(np.median(self.trans)), 4),
            "rot_err_deg_median": round(float(np.median(self.rot)), 3),
            "scale_err_pct_median": round(float(np.median(self.scale)), 3),
            "collision_free_pct": round(100.0 * (1.0 - self.colliding / n), 2),
            "collision_free_scenes_pct": round(100.0 * self.clean_scenes / max(scenes, 1), 2),
            "supported_pct": round(100.0 * (1.0 - self.unsupported / n), 2),
            "silhouette_iou": round(float(np.mean(self.ious)), 4) if self.ious else None,
            "trans_err_mean": round(float(np.mean(self.trans)), 4),
            "rot_err_deg_p90": round(float(np.percentile(self.rot, 90)), 3),
        }


def bench_refine(quick: bool, seed: int = 0, scenes: int | None = None, progress=None) -> dict:
    """Refine the held-out perturbed scenes with the built-in policy; before/after metrics.

    `seed` seeds the policy's random restarts (the scenes and perturbations are fixed);
    `scenes` overrides the count (tests use a handful)."""
    count = int(scenes) if scenes is not None else (QUICK_SCENES if quick else FULL_SCENES)
    before, after = _Tally(), _Tally()
    kept = 0
    per_scene = []
    t0 = time.perf_counter()
    for index in range(count):
        truth = bench_scene(index)
        start = perturb(truth, np.random.default_rng([index, 1]), **PERTURB)
        before.add(start, truth, verify(start))
        ts = time.perf_counter()
        result = refine(start, BuiltinPolicy(seed=seed + index), rounds=ROUNDS, candidates=CANDIDATES)
        after.add(result.state, truth, result.final)
        kept += result.kept_rounds
        per_scene.append(round(time.perf_counter() - ts, 2))
        if progress is not None:
            progress(index + 1, count)
    return {
        "bench": "refine",
        "policy": "builtin",
        "quick": bool(quick),
        "scenes": count,
        "objects": before.objects,
        "rounds": ROUNDS,
        "candidates": CANDIDATES,
        "seed": int(seed),
        "perturbation": PERTURB,
        "rotation_metric": "geodesic angle between rotations, not symmetry-aware",
        "before": before.to_json(count),
        "after": after.to_json(count),
        "kept_rounds_mean": round(kept / max(count, 1), 3),
        "seconds": round(time.perf_counter() - t0, 2),
        "seconds_per_scene_max": max(per_scene) if per_scene else 0.0,
    }
