"""`sam3d bench geometry`: the shipped model against the held-out synthetic split.

Runs, side by side in one process: the model in its distilled 4-step shortcut mode, the same model
with 25 plain flow steps and classifier-free guidance, and the ellipsoid baseline.  The model sees
no point map (the add-on has none at run time either), so layout metrics come raw and after one
global scale about the camera centre (`adds_01`).

`--by-category PATH` also writes the per-category means (where the shape is lost) and the same
means over the samples grouped by how well the ellipsoid baseline fits them (how hard a sample is
for shape, whatever its category), and `--split train --limit N` scores training samples instead
(how far held-out falls below the fit).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .errors import InputError

REPORT_KEYS = ("viou", "f1_001", "f1_005", "chamfer", "box_iou", "rot_err_deg_median", "adds",
               "adds_01", "adds_01_raw", "seconds_per_object")
CATEGORY_KEYS = ("viou", "f1_005", "adds_01")
SPLITS = ("test", "train")
# Edges of the baseline-vIoU groups: an ellipsoid scores ~0.1 on thin, open shapes (tables,
# lamps), ~0.5 on solid ones; the calibration task had an ellipsoid at 0.48 on average.
BASELINE_VIOU_EDGES = (0.0, 0.2, 0.4, 0.6, 1.0)
QUICK_SAMPLES = 32
DEFAULT_DATA = Path("data/synth")


def load_test_samples(data_dir: Path, limit: int | None, split: str = "test") -> list[dict]:
    from .data.dataset import list_samples, load_sample

    if split not in SPLITS:
        raise InputError(f"Unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
    paths = list_samples(data_dir, split)
    if not paths:
        raise InputError(f"No {split} samples in {data_dir}/{split}; generate them with `sam3d data --out {data_dir} --n N --n-test 64`.")
    return [load_sample(p) for p in paths[:limit]]


def by_category(samples: list[dict], rows: list[dict]) -> dict:
    """Per-category means of CATEGORY_KEYS over evaluate()'s per-sample rows, with counts."""
    groups: dict[str, list[dict]] = {}
    for sample, row in zip(samples, rows):
        groups.setdefault(str(sample.get("category", "?")), []).append(row)
    return {name: {"n": len(group), **_means(group)} for name, group in sorted(groups.items())}


def _means(rows: list[dict]) -> dict:
    """Means of CATEGORY_KEYS over some of evaluate()'s per-sample rows, rounded as the report is."""
    return {k: round(float(np.mean([r[k] for r in rows])), 5) for k in CATEGORY_KEYS}


def by_baseline_viou(baseline_rows: list[dict], rows_by_mode: dict[str, list[dict]],
                     edges=BASELINE_VIOU_EDGES) -> dict:
    """Each mode's means of CATEGORY_KEYS over the samples grouped by the baseline's own vIoU on
    them ("0.4-0.6": baseline vIoU in [0.4, 0.6); the last group includes its upper edge), with
    counts.  Empty groups are left out."""
    scores = np.array([row["viou"] for row in baseline_rows])
    groups = {}
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        members = np.flatnonzero((scores >= lo) & ((scores <= hi) if last else (scores < hi)))
        if members.size == 0:
            continue
        groups[f"{lo:g}-{hi:g}"] = {"n": int(members.size), **{
            mode: _means([rows[j] for j in members]) for mode, rows in rows_by_mode.items()}}
    return groups


def model_predict_fn(pipe, shortcut: bool, box_align: bool = True, samples: int | None = None):
    from .preprocess import prepare_inputs

    card = pipe.card

    def predict(sample: dict) -> dict:
        start = time.perf_counter()
        inputs = prepare_inputs(sample["rgb"], sample["mask"], card.input_size, card.crop_box_factor)
        out = pipe.generate(inputs, seed=int(sample.get("seed", 0)) % (2**31), shortcut=shortcut,
                            mask=sample["mask"] if box_align else None, samples=samples)
        seconds = time.perf_counter() - start
        return {"occupancy": out["logits"] > card.occupancy_threshold, "R": out["R"], "t": out["t"],
                "s": out["s"], "seconds": seconds}

    return predict


def bench_geometry(model: str = "tiny", data_dir: str | Path | None = None, quick: bool = False,
                   limit: int | None = None, box_align: bool = True, split: str = "test",
                   categories: dict | None = None, samples: int | None = None) -> dict:
    """The report (exactly REPORT_KEYS per mode, plus n_samples).  Pass a dict as `categories` to
    receive each mode's per-category means (`by_category`).  `samples`: how many samples each
    model prediction averages (default: the card's)."""
    from .baseline import make_baseline_predict_fn
    from .bench_geometry import evaluate
    from .pipeline import Sam3DPipeline

    data_dir = Path(data_dir or DEFAULT_DATA)
    test_samples = load_test_samples(data_dir, QUICK_SAMPLES if quick else limit, split)
    pipe = Sam3DPipeline(model=model, device="cpu")
    median_depth = float(pipe.card.data.get("training", {}).get("median_depth", 0.0))
    if median_depth <= 0:
        raise InputError(f"Model card of '{pipe.card.name}' has no training median depth; the baseline needs it.")
    # Warm the sessions so the first sample's timing is not session creation.
    model_predict_fn(pipe, True, samples=samples)(test_samples[0])

    report = {}
    rows_by_mode: dict[str, list[dict]] = {}
    for key, fn in (
        ("model_4step", model_predict_fn(pipe, shortcut=True, box_align=box_align, samples=samples)),
        ("model_25step_cfg", model_predict_fn(pipe, shortcut=False, box_align=box_align, samples=samples)),
        ("baseline", make_baseline_predict_fn(median_depth, resolution=pipe.card.occupancy_resolution)),
    ):
        print(f"bench geometry: {key} on {len(test_samples)} samples", file=sys.stderr)
        rows: list[dict] = []
        metrics = evaluate(fn, test_samples, per_sample=rows)
        report[key] = {k: round(float(metrics[k]), 5) for k in REPORT_KEYS}
        rows_by_mode[key] = rows
        if categories is not None:
            categories[key] = by_category(test_samples, rows)
    if categories is not None:
        categories["by_baseline_viou"] = by_baseline_viou(rows_by_mode["baseline"], rows_by_mode)
    report["n_samples"] = len(test_samples)
    return report


def bench_geometry_cli(args) -> dict:
    categories = {} if args.by_category else None
    report = bench_geometry(model=args.model or "tiny", data_dir=args.data, quick=args.quick,
                            limit=args.limit, box_align=args.box_align, split=args.split,
                            categories=categories, samples=args.samples)
    if args.by_category:
        Path(args.by_category).write_text(json.dumps({"split": args.split, "n_samples": report["n_samples"],
                                                      **categories}, indent=1) + "\n")
    return report


def bench_geometry_stage(model: str = "tiny", data_dir: str | Path | None = None, repeats: int = 8) -> dict:
    """Wall-clock of the geometry stage per object, distilled 4-step vs 25-step CFG, side by side.

    Reports the medians of each part (condition encoding, flow sampling, structure decoding) so
    the speed-up of the sampler itself and of the whole stage can both be read off.
    """
    import statistics

    from .pipeline import Sam3DPipeline
    from .preprocess import prepare_inputs

    pipe = Sam3DPipeline(model=model, device="cpu")
    samples = load_test_samples(Path(data_dir or DEFAULT_DATA), repeats)
    inputs = [prepare_inputs(s["rgb"], s["mask"], pipe.card.input_size, pipe.card.crop_box_factor) for s in samples]
    pipe.generate(inputs[0], seed=0, shortcut=True)  # warm-up: session creation
    pipe.generate(inputs[0], seed=0, shortcut=False)
    parts = {"model_4step": [], "model_25step_cfg": []}
    for i, (inp, sample) in enumerate(zip(inputs, samples)):  # alternate the two modes so load hits both alike
        for key, shortcut in (("model_4step", True), ("model_25step_cfg", False)):
            timings: dict = {}
            # with the mask: the box alignment is part of the stage (timed under "decode")
            pipe.generate(inp, seed=i, shortcut=shortcut, timings=timings, mask=sample["mask"])
            parts[key].append(timings)
    report = {}
    for key, rows in parts.items():
        report[key] = {p: round(statistics.median(r[p] for r in rows), 5) for p in ("encode", "sample", "decode")}
        report[key]["total"] = round(statistics.median(sum(r.values()) for r in rows), 5)
    fast, slow = report["model_4step"], report["model_25step_cfg"]
    report["sample_speedup"] = round(slow["sample"] / fast["sample"], 2)
    report["total_speedup"] = round(slow["total"] / fast["total"], 2)
    report["objects"] = len(inputs)
    return report
