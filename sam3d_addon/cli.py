"""`sam3d` command line: 3dfy, data, train, export, bench.

Errors a user can cause end as one line on stderr and exit status 2; nothing is written then.
Heavy modules (bpy, torch, onnxruntime) are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from .errors import Sam3DError


def _add_3dfy(sub):
    p = sub.add_parser("3dfy", help="3Dfy the masked objects of a photo into a .blend (and GLB/USD/PNG)")
    p.add_argument("image")
    p.add_argument("--mask", action="append", required=True, help="binary mask image (repeat for several objects)")
    p.add_argument("--out", required=True, help="output .blend")
    p.add_argument("--glb", help="also export a GLB (Blender's glTF exporter)")
    p.add_argument("--usd", help="also export USD (.usd/.usdc/.usda, Blender's USD exporter)")
    p.add_argument("--render", help="also render a PNG through the matched camera, photo behind")
    p.add_argument("--model", default="tiny")
    p.add_argument("--texture-model", default="auto",
                   help="texture model name or path; 'auto' (default) uses the shipped one when installed, 'none' turns texturing off")
    p.add_argument("--output", default="mesh", choices=["mesh", "gaussians", "both"],
                   help="what to build: the (textured) mesh, 3D Gaussians (written as a .ply next to --out and "
                        "imported as a point cloud), or both")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model card's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance strength (non-shortcut mode)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples averaged into each object's shape (default: the model card's; more is steadier "
                        "and slower)")
    p.add_argument("--no-shortcut", action="store_true", help="plain flow sampling instead of the distilled few-step mode")
    p.add_argument("--fit-layout", action=argparse.BooleanOptionalAction, default=True,
                   help="after sampling, fit each object's translation/scale/yaw to its mask (default: on; "
                        "~30 s per object on a CPU; --no-fit-layout keeps the model's own pose)")
    p.add_argument("--box-align", action=argparse.BooleanOptionalAction, default=True,
                   help="set each sampled pose's scale and sideways place so the object's projected box "
                        "matches its mask's box (default: on; --no-box-align keeps the flow's own pose)")
    p.add_argument("--no-bake", action="store_true",
                   help="do not UV-unwrap and bake a texture: the mesh keeps its colours as a colour attribute "
                        "(the material reads it)")
    p.add_argument("--photo-projection", action="store_true",
                   help="bake the photo onto the visible side of each mesh (off by default: it is only as good "
                        "as the pose, and the tiny model's poses are poor -- its silhouettes overlap their masks "
                        "with IoU ~0.2 -- so the photo would land on the wrong surfaces)")
    p.add_argument("--delight", type=float, default=0.0, metavar="STRENGTH",
                   help="with --photo-projection: divide the photo's smooth shading out first, 0 (off) to 1")
    p.add_argument("--texture-size", type=int, default=512, metavar="N",
                   help="baked texture size in pixels per side (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print one JSON object describing the result")
    p.set_defaults(func=cmd_3dfy)


def result_summary(result) -> dict:
    """The JSON the CLI prints: poses in Blender world coordinates."""
    from . import pose

    objs = []
    for o in result.objects:
        loc, quat, scale = pose.decompose(o.matrix_world)
        objs.append({
            "name": o.name, "mask": o.mask,
            "location": [round(float(v), 6) for v in loc],
            "rotation_quaternion": [round(float(v), 6) for v in quat],
            "scale": [round(float(v), 6) for v in scale],
            "vertices": int(len(o.vertices)), "faces": int(len(o.faces)),
        })
    cam = result.camera
    loc, quat, _ = pose.decompose(cam.matrix_world)
    return {
        "objects": objs,
        "camera": {
            "location": [round(float(v), 6) for v in loc],
            "rotation_quaternion": [round(float(v), 6) for v in quat],
            "lens_mm": round(cam.lens_mm, 4), "sensor_width_mm": cam.sensor_width_mm,
            "resolution": list(cam.resolution), "focal_source": cam.focal_source,
        },
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "device": result.device,
    }


@contextlib.contextmanager
def _stdout_to_stderr(active: bool):
    """Send stdout (file descriptor 1, where Blender's C code prints, and sys.stdout) to stderr."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):  # Blender also reports through sys.stdout
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _check_out_path(path: str | None, suffixes: tuple[str, ...], what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise Sam3DError(f"{what} must end in {' or '.join(suffixes)}: {p}")
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write_gaussian_plys(result, out: Path) -> list[Path]:
    """One 3DGS PLY per object next to the .blend (OUT.<object>.ply), in the object's canonical
    frame (the object's pose in the .blend places it)."""
    from .texture.gaussians import write_ply

    paths = []
    for o in result.objects:
        if o.gaussians is None:
            continue
        g = o.gaussians
        path = out.with_name(f"{out.stem}.{o.name}.ply")
        write_ply(path, g["xyz"], g["scales"], g["rotations"], g["opacities"], g["colors"])
        paths.append(path)
    return paths


def cmd_3dfy(args) -> int:
    import time

    out = _check_out_path(args.out, (".blend",), "--out")
    glb = _check_out_path(args.glb, (".glb",), "--glb")
    usd = _check_out_path(args.usd, (".usd", ".usdc", ".usda"), "--usd")
    png = _check_out_path(args.render, (".png",), "--render")
    from .pipeline import TEXTURE_SIZE_RANGE

    if not 0.0 <= args.delight <= 1.0:
        raise Sam3DError(f"--delight must be between 0 and 1, not {args.delight:g}")
    lo, hi = TEXTURE_SIZE_RANGE
    if not lo <= args.texture_size <= hi:
        raise Sam3DError(f"--texture-size must be {lo} to {hi} pixels, not {args.texture_size}")
    if args.no_bake and (args.photo_projection or args.delight):
        raise Sam3DError("--photo-projection and --delight work on the baked texture; drop --no-bake")
    if args.delight and not args.photo_projection:
        raise Sam3DError("--delight de-lights the projected photo; add --photo-projection")
    if glb and args.output == "gaussians":
        raise Sam3DError("--glb exports meshes; with --output gaussians there is none (use --output both)")

    from .pipeline import Sam3DPipeline

    def notice(msg):
        print(f"sam3d: {msg}", file=sys.stderr)

    texture_model = None if str(args.texture_model).lower() == "none" else args.texture_model
    pipe = Sam3DPipeline(model=args.model, device=args.device, notice=notice, texture_model=texture_model)
    result = pipe.run(args.image, args.mask, steps=args.steps, seed=args.seed, cfg_strength=args.cfg,
                      shortcut=False if args.no_shortcut else None, fit_layout=args.fit_layout, box_align=args.box_align,
                      output=args.output, bake=not args.no_bake, photo_projection=args.photo_projection, delight=args.delight,
                      texture_size=args.texture_size, samples=args.samples)
    plys = write_gaussian_plys(result, out) if args.output != "mesh" else []

    from . import blender_bridge as bridge

    # Blender prints render/export chatter on stdout; with --json, stdout carries only the JSON.
    with _stdout_to_stderr(args.json):
        t0 = time.perf_counter()
        bridge.reset_to_empty_scene()
        collection = bridge.build_result(result)
        result.timings["build_scene"] = time.perf_counter() - t0
        if png:
            t0 = time.perf_counter()
            bridge.render_png(str(png))
            result.timings["render"] = time.perf_counter() - t0
        if glb:
            bridge.export_glb(str(glb), collection)
        if usd:
            bridge.export_usd(str(usd))
        bridge.save_blend(str(out))
    if args.json:
        summary = result_summary(result)
        if args.output != "mesh":  # the four keys stay exactly those for plain meshes
            summary["gaussians"] = [str(p) for p in plys]
        print(json.dumps(summary))
    else:
        names = ", ".join(o.name for o in result.objects)
        print(f"sam3d: 3Dfied {len(result.objects)} object(s) ({names}) on {result.device} -> {out}")
    return 0


def _add_data(sub):
    from .data.engine import add_data_arguments

    p = sub.add_parser("data", help="generate synthetic training data with Blender")
    add_data_arguments(p)  # one definition of the options, shared with the engine's own entry point
    p.set_defaults(func=cmd_data)


def cmd_data(args) -> int:
    from .data.engine import generate

    generate(args.out, n_train=args.n, n_test=args.n_test, seed=args.seed, resolution=args.resolution,
             workers=args.workers, render_samples=args.samples, progress=_bar("data"), texture=args.texture)
    return 0


def _add_train(sub):
    p = sub.add_parser("train", help="train the geometry model (VAE, encoder pre-training, flow, shortcut distillation)")
    p.add_argument("--config", default="tiny")
    p.add_argument("--data", required=True, action="append",
                   help="a `sam3d data` directory or a `sam3d pack`; repeat to train on several as one set")
    p.add_argument("--out", default="runs/tiny")
    p.add_argument("--minutes", default=None, metavar="VAE,ENCODER,FLOW,DISTILL[,DECODER]",
                   help="time budget per stage in minutes; step counts are fitted to it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train (auto: CUDA when torch sees a GPU)")
    p.add_argument("--stages", default="vae,encoder,flow,distill",
                   help="the stages to run, in order: vae,encoder,flow,distill,decoder (decoder: fit the "
                        "structure decoder to the distilled sampler's own samples; only when named)")
    p.add_argument("--steps", default=None, metavar="VAE,ENCODER,FLOW,DISTILL[,DECODER]",
                   help="override the schedule's step counts, e.g. 20,20,20,10 for a smoke run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one schedule value, e.g. --set flow_batch=256 (repeatable; the card records them)")
    p.add_argument("--stop-after", type=float, default=None, metavar="MIN",
                   help="checkpoint and stop after MIN minutes of this run; the same command resumes")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this model.pt or shipped model folder (e.g. models/tiny; to go on training on "
                        "more data): training resumes at the flow stage with its VAE, latent normalisation and "
                        "weights; the card counts its time")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from .train.loop import train_main

    return train_main(args)


def _add_pack(sub):
    from .train.pack import add_pack_arguments

    p = sub.add_parser("pack", help="pack a data set's model inputs into a few compact files (to train elsewhere)")
    add_pack_arguments(p)
    p.set_defaults(func=cmd_pack)


def cmd_pack(args) -> int:
    from .train.pack import pack_main

    return pack_main(args, progress=_bar("pack"))


def _add_average(sub):
    from .train.average import add_average_arguments

    p = sub.add_parser("average", help="average a run's weights with the shipped model it went on from (train --init)")
    add_average_arguments(p)
    p.set_defaults(func=cmd_average)


def cmd_average(args) -> int:
    from .train.average import average_main

    return average_main(args)


def _add_train_texture(sub):
    p = sub.add_parser("train-texture", help="train the texture & refinement model (structured-latent VAE, then flow)")
    p.add_argument("--data", required=True, help="a `sam3d data --texture` directory")
    p.add_argument("--out", default="runs/tiny-texture")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this texture_model.pt's weights (missing ones keep their initial values); "
                        "its training time is recorded in the new model's card")
    p.add_argument("--minutes", default=None, metavar="VAE,FLOW", help="time budget per stage in minutes")
    p.add_argument("--steps", default=None, metavar="VAE,FLOW", help="override the step counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training samples")
    p.set_defaults(func=cmd_train_texture)


def cmd_train_texture(args) -> int:
    from .train.texture import train_texture_main

    return train_texture_main(args)


def _add_export_texture(sub):
    p = sub.add_parser("export-texture", help="export a texture checkpoint to ONNX + model.json")
    p.add_argument("--checkpoint", help="texture_model.pt from `sam3d train-texture`; omit with --random")
    p.add_argument("--random", action="store_true", help="export a freshly initialised model (development)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", default=None)
    p.add_argument("--metrics", default=None, help="a `sam3d bench texture --json` output to record in the card")
    p.add_argument("--weights", choices=("float16", "float32"), default="float16",
                   help="how the files store the large weights (compute is float32 either way; float16 halves the files)")
    p.set_defaults(func=cmd_export_texture)


def cmd_export_texture(args) -> int:
    from .nn.texture_export import export_texture_checkpoint, export_texture_random

    fields = {"version": args.version} if args.version else {}
    fields.update(_metrics_field(args.metrics))
    if args.random:
        export_texture_random(args.out, seed=args.seed, weights=args.weights, **fields)
    elif args.checkpoint:
        export_texture_checkpoint(args.checkpoint, args.out, weights=args.weights, **fields)
    else:
        raise Sam3DError("export-texture needs --checkpoint PATH or --random.")
    print(f"sam3d: exported to {args.out}")
    return 0


def _metrics_field(path: str | None) -> dict:
    """{"metrics": the bench JSON at `path`} for a model card, or {} without one."""
    if not path:
        return {}
    try:
        return {"metrics": json.loads(Path(path).read_text())}
    except (OSError, ValueError) as exc:
        raise Sam3DError(f"Cannot read --metrics {path}: {exc}") from None


def _add_export(sub):
    p = sub.add_parser("export", help="export a checkpoint to ONNX + model.json")
    p.add_argument("--config", default="tiny")
    p.add_argument("--checkpoint", help="trained checkpoint (.pt); omit with --random")
    p.add_argument("--random", action="store_true", help="export a freshly initialised model (development)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", default=None, help="model version written into the card")
    p.add_argument("--metrics", default=None, help="a `sam3d bench ... --json` output to record in the card")
    p.add_argument("--weights", choices=("float16", "float32"), default="float16",
                   help="how the files store the large weights (compute is float32 either way; float16 halves the files)")
    p.add_argument("--noise-scale", action="append", default=[], metavar="LATENT=FACTOR",
                   help="scale a latent's starting noise at sampling time, e.g. shape=0.5 (written to the card's "
                        "sampler.noise_scale; repeatable)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples each prediction averages by default (the card's sampler.samples; default 1)")
    p.set_defaults(func=cmd_export)


def _noise_scale_field(items: list[str]) -> dict:
    """{"sampler": {"noise_scale": {...}}} from LATENT=FACTOR strings, or {} without any."""
    scale = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            scale[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise Sam3DError(f"--noise-scale wants LATENT=FACTOR (e.g. shape=0.5), not '{item}'.")
    return {"sampler": {"noise_scale": scale}} if scale else {}


def cmd_export(args) -> int:
    from .nn.export import export_checkpoint, export_random

    fields = {}
    if args.version:
        fields["version"] = args.version
    fields.update(_metrics_field(args.metrics))
    fields.update(_noise_scale_field(args.noise_scale))
    if args.samples is not None:
        fields.setdefault("sampler", {})["samples"] = args.samples
    if args.random:
        export_random(args.config, args.out, seed=args.seed, weights=args.weights, **fields)
    elif args.checkpoint:
        export_checkpoint(args.checkpoint, args.out, weights=args.weights, **fields)
    else:
        raise Sam3DError("export needs --checkpoint PATH or --random.")
    print(f"sam3d: exported to {args.out}")
    return 0


def _add_refine(sub):
    p = sub.add_parser("refine", help="refine a scene's layout with the built-in policy or a VLM (observe, act, verify)")
    p.add_argument("blend", help="input .blend (e.g. written by sam3d 3dfy)")
    p.add_argument("--out", required=True, help="output .blend")
    p.add_argument("--prompt", default="", help="what the scene should look like")
    p.add_argument("--policy", default="builtin", choices=["builtin", "vlm"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--candidates", type=int, default=4, help="programs tried per round; the best is kept")
    p.add_argument("--vlm-url", default=None, help="OpenAI-compatible base URL (default: http://127.0.0.1:8000/v1)")
    p.add_argument("--vlm-model", default=None)
    p.add_argument("--allow-online", action="store_true", help="allow a VLM URL that is not on this machine")
    p.add_argument("--log", default=None, metavar="DIR", help="write each round as JSON lines (and PNGs) here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object: reports before/after, rounds")
    p.set_defaults(func=cmd_refine)


def _object_masks(objects, resolution) -> dict:
    """Masks of 3Dfied objects, read from the files their `sam3d_mask` property names."""
    import numpy as np
    from PIL import Image

    masks = {}
    for ob in objects:
        path = ob.get("sam3d_mask")
        if path and Path(str(path)).is_file():
            img = Image.open(str(path)).convert("L")
            if img.size != tuple(resolution):
                img = img.resize(tuple(resolution), Image.NEAREST)
            masks[ob.name] = np.asarray(img) > 127
    return masks


def cmd_refine(args) -> int:
    src = Path(args.blend)
    if src.suffix.lower() != ".blend" or not src.is_file():
        raise Sam3DError(f"No .blend file at {src}.")
    out = _check_out_path(args.out, (".blend",), "--out")
    if args.rounds < 1 or args.candidates < 1:
        raise Sam3DError("--rounds and --candidates must be at least 1.")

    from . import blender_bridge as bridge
    from .refine.loop import refine
    from .refine.policy_builtin import BuiltinPolicy

    scene = bridge.open_blend(str(src.resolve()))
    res = (scene.render.resolution_x, scene.render.resolution_y)
    base = bridge.refine_read_scene(scene, masks=_object_masks(scene.objects, res))
    if not base.objects:
        raise Sam3DError(f"{src} has no visible mesh objects to refine.")
    observe = None
    if args.policy == "vlm":
        from .refine import policy_vlm

        policy = policy_vlm.VLMPolicy(args.vlm_url or policy_vlm.DEFAULT_URL, args.vlm_model or policy_vlm.DEFAULT_MODEL,
                                      online_access=args.allow_online)

        def observe(state):
            return bridge.refine_render_views(state, scene, size=256)
    else:
        policy = BuiltinPolicy(seed=args.seed)
    live = {"state": base}

    def on_keep(index, state):
        bridge.refine_apply(state, live["state"], scene)
        live["state"] = state

    result = refine(base, policy, rounds=args.rounds, candidates=args.candidates, prompt=args.prompt,
                    log_dir=args.log, observe=observe, on_keep=on_keep)
    bridge.save_blend(str(out))
    if args.json:
        summary = result.to_json()
        summary["rounds"] = [{k: v for k, v in r.items() if k != "candidates"} for r in summary["rounds"]]
        summary["out"] = str(out)
        print(json.dumps(summary))
    else:
        print(f"sam3d: refined in {result.kept_rounds} round(s), score {result.initial.score:.3f} -> "
              f"{result.final.score:.3f} ({result.stop_reason}) -> {out}")
    return 0


def _add_bench(sub):
    p = sub.add_parser("bench", help="benchmarks: geometry, speed, import, refine, texture")
    p.add_argument("which", choices=["geometry", "speed", "import", "refine", "texture"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="a fixed small subset, in under 2 minutes")
    p.add_argument("--model", default=None, help="model name or path (default: tiny; texture: tiny-texture)")
    p.add_argument("--data", default=None, help="data directory (default: data/synth; texture: data/tex)")
    p.add_argument("--steps", type=int, default=None, help="bench texture: sampler steps (default: the card's)")
    p.add_argument("--faces", type=int, default=500_000, help="bench import: mesh size")
    p.add_argument("--seed", type=int, default=0, help="bench refine: the policy's seed (the scenes are fixed)")
    p.add_argument("--box-align", action=argparse.BooleanOptionalAction, default=True,
                   help="bench geometry: align the model's poses with the mask boxes, as 3dfy does "
                        "(--no-box-align scores the flow's own pose)")
    p.add_argument("--by-category", metavar="PATH", default=None,
                   help="bench geometry: also write per-category means (vIoU, F1@0.05, ADD-S@0.1) to PATH as JSON, "
                        "and the same over samples grouped by the baseline's vIoU (by_baseline_viou)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="bench geometry: the held-out split (default) or training samples (to see the fit)")
    p.add_argument("--limit", type=int, default=None, help="bench geometry: the first N samples of the split")
    p.add_argument("--samples", type=int, default=None,
                   help="bench geometry: samples averaged per prediction (default: the model card's)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if args.which == "texture":
        from .bench_texture import bench_texture

        report = bench_texture(model=args.model or "tiny-texture", data_dir=args.data, quick=args.quick,
                               steps=args.steps)
    elif args.which == "geometry":
        from .bench import bench_geometry_cli

        report = bench_geometry_cli(args)
    elif args.which == "speed":
        from .bench import bench_geometry_stage
        from .nn.speed import bench_speed

        report = bench_speed(args.model or "tiny")
        report["geometry_stage"] = bench_geometry_stage(args.model or "tiny", args.data)
    elif args.which == "refine":
        from .refine.bench import bench_refine

        report = bench_refine(args.quick, seed=args.seed)
    else:
        from .bench_import import bench_import

        report = bench_import(faces=args.faces)
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0


def _bar(label: str):
    """A plain-text progress bar on stderr (no dependency, works in CI logs)."""
    state = {"last": -1}

    def update(done: int, total: int, text: str = ""):
        pct = int(100 * done / max(total, 1))
        if pct != state["last"]:
            state["last"] = pct
            filled = pct // 4
            print(f"\r{label} [{'#' * filled}{'.' * (25 - filled)}] {done}/{total} {text}"[:100],
                  end="" if done < total else "\n", file=sys.stderr, flush=True)

    return update


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3d", description="SAM 3D for Blender")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_3dfy, _add_data, _add_pack, _add_train, _add_average, _add_export, _add_train_texture, _add_export_texture, _add_bench, _add_refine):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Sam3DError as exc:
        print(f"sam3d: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sam3d: cancelled; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
