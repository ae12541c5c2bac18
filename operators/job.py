# SPDX-License-Identifier: GPL-3.0-or-later
"""A 3Dfy job: inputs gathered from Blender, inference in a worker thread, the result built.

Threading rules (Blender's API is not thread-safe):
* `gather_inputs` reads the photo and masks from bpy images into NumPy arrays on the main thread;
* `ThreeDfyJob._work` runs in the worker thread and touches only NumPy, the pipeline and the
  job's own lock-protected fields -- never bpy;
* `ThreeDfyJob.poll_worker` is the main-thread step function (called by the modal operator's
  timer, or directly by tests): it publishes progress and, once the worker is done, builds the
  result into the scene.

The pipeline (ONNX sessions) is cached between runs; `release_pipeline` frees it.
"""

from __future__ import annotations

import os
import threading
import traceback

import bpy
import numpy as np

from ..sam3d_addon import blender_bridge as bridge
from ..sam3d_addon.errors import Cancelled, InputError, Sam3DError
from . import preferences

# Tests (and scripted use) may replace the pipeline class: a callable (model, device, notice)
# returning an object with Sam3DPipeline's `run` / `release`.  None means the real one.
PIPELINE_FACTORY = None

_pipeline = None
_pipeline_key = None
_active_job: "ThreeDfyJob | None" = None


# -- the cached pipeline ---------------------------------------------------------------------

def _notice(message: str) -> None:
    """Pipeline notices (e.g. CUDA fell back to the CPU) go to the job that is running."""
    job = _active_job
    if job is not None:
        job.notices.append(str(message))
    else:
        print(f"SAM 3D: {message}")


def get_pipeline(model: str, device: str, notice=_notice):
    """The cached pipeline for (model, device); a different choice replaces (releases) it."""
    global _pipeline, _pipeline_key
    key = (model, device, PIPELINE_FACTORY)
    if _pipeline is not None and _pipeline_key == key:
        return _pipeline
    release_pipeline()
    if PIPELINE_FACTORY is not None:
        pipe = PIPELINE_FACTORY(model=model, device=device, notice=notice)
    else:
        try:
            from ..sam3d_addon.pipeline import Sam3DPipeline
        except ImportError as exc:
            raise Sam3DError(f"The SAM 3D runtime is incomplete ({exc}); reinstall the extension "
                             "build for your platform.") from None
        pipe = Sam3DPipeline(model=model, device=device, notice=notice)
    _pipeline, _pipeline_key = pipe, key
    return pipe


def release_pipeline() -> bool:
    """Drop the cached pipeline's ONNX sessions; True when there was one."""
    global _pipeline, _pipeline_key
    pipe, _pipeline, _pipeline_key = _pipeline, None, None
    if pipe is None:
        return False
    try:
        pipe.release()
    except Exception:  # noqa: BLE001 - freeing memory must never raise into the UI
        traceback.print_exc()
    return True


def pipeline_loaded() -> bool:
    return _pipeline is not None


def busy() -> bool:
    """A worker thread is still running (a cancelled one may take a moment to stop)."""
    return _active_job is not None and _active_job.alive()


def active_job() -> "ThreeDfyJob | None":
    return _active_job


def shutdown() -> None:
    """On unregister: cancel a running job and free the model."""
    global _active_job
    if _active_job is not None:
        _active_job.cancel()
        _active_job = None
    release_pipeline()


# -- settings and inputs (main thread) -------------------------------------------------------

def resolve_settings(context, model_override: str = "", device_override: str = "") -> dict:
    """The effective model / device / steps / seed: operator override > scene > preferences."""
    settings = context.scene.sam3d
    prefs = preferences.get(context)
    model = model_override or settings.model
    if model in ("", "DEFAULT"):
        model = prefs.model if prefs is not None else "tiny"
    device = device_override or settings.device
    if device in ("", "DEFAULT"):
        device = prefs.device if prefs is not None else "AUTO"
    steps = settings.steps or (prefs.steps if prefs is not None else 0)
    return {
        "model": model,
        "device": device.lower(),
        "steps": int(steps) or None,
        "seed": int(settings.seed),
        "keep_loaded": prefs.keep_loaded if prefs is not None else True,
        # passed on to Sam3DPipeline.run
        "run_options": {
            "output": str(settings.output).lower(),
            "bake": bool(settings.bake_texture),
            "photo_projection": bool(settings.photo_projection),
            "fit_layout": bool(settings.fit_layout),
            "samples": int(settings.samples) or None,
        },
    }


def editor_image(context):
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "IMAGE_EDITOR":
        return space.image
    return None


def photo_of(context):
    """The photo to 3Dfy: the panel's image, else the image shown in the Image Editor."""
    return context.scene.sam3d.image or editor_image(context)


def _stem(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".bmp", ".webp"} else name


def _pixels(image, what: str) -> np.ndarray:
    try:
        return bridge.image_to_array(image, alpha=True)
    except (ValueError, RuntimeError):
        where = f" ({bpy.path.abspath(image.filepath)})" if image.filepath else ""
        raise InputError(f"{what} '{image.name}' has no pixels; is the file missing{where}?") from None


def photo_array(image) -> np.ndarray:
    """A bpy image as HxWx3 uint8 sRGB, top row first (what the pipeline reads from files)."""
    rgba = _pixels(image, "Image")
    rgb = rgba[..., :3]
    if image.is_float:  # float buffers hold scene-linear values
        rgb = bridge._linear_to_srgb(rgb)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def mask_array(image) -> np.ndarray:
    """A mask image as HxW bool: alpha when it is painted as alpha, else white-on-black."""
    rgba = _pixels(image, "Mask")
    alpha = rgba[..., 3]
    if alpha.min() < 0.5:
        return alpha > 0.5
    return rgba[..., :3].max(axis=2) > 0.5


def gather_inputs(context) -> dict:
    """Photo and masks as NumPy arrays (main thread); raises InputError with one line."""
    settings = context.scene.sam3d
    photo = photo_of(context)
    if photo is None:
        raise InputError("No photo: open one in the Image Editor or pick it in the SAM 3D panel.")
    items = [item for item in settings.masks if item.image is not None]
    if not items:
        raise InputError("No mask: add a mask image to the SAM 3D panel's mask list.")
    image = photo_array(photo)
    masks, names = [], []
    for item in items:
        if item.image == photo:
            raise InputError(f"Mask '{item.image.name}' is the photo itself; pick or paint a mask image.")
        masks.append(mask_array(item.image))
        names.append(_stem(item.image.name))
    return {"image": image, "masks": masks, "names": names, "photo_name": photo.name,
            "photo_path": bpy.path.abspath(photo.filepath) if photo.filepath else None}


# -- the job ----------------------------------------------------------------------------------

def worker_outcome(fn, what: str) -> tuple:
    """Run a worker's job and turn how it ended into ("ok", result), ("cancelled", message) or
    ("error", one line); unexpected failures are logged in full to the console."""
    try:
        return ("ok", fn())
    except Cancelled as exc:
        return ("cancelled", str(exc))
    except Sam3DError as exc:
        return ("error", str(exc))
    except MemoryError:
        return ("error", f"Out of memory during {what}; try the CPU device, fewer objects or 'Free Model Memory'.")
    except Exception as exc:  # noqa: BLE001 - report any failure as one line, log the rest
        traceback.print_exc()
        return ("error", f"{what} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")


def _accepted_options(pipe, options: dict) -> dict:
    """The options that `pipe.run` takes by name (all of them when it takes **kwargs)."""
    import inspect

    try:
        params = inspect.signature(pipe.run).parameters
    except (TypeError, ValueError):
        return dict(options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}


class ThreeDfyJob:
    """One 3Dfy run.  States: 'READY' -> 'RUNNING' -> 'FINISHED' | 'CANCELLED' | 'ERROR'."""

    def __init__(self, pipe, inputs: dict, steps=None, seed=0, keep_loaded=True, scene_name=None,
                 run_options: dict | None = None):
        self.pipe = pipe
        self.inputs = inputs
        self.steps = steps
        self.seed = seed
        # More keyword arguments of pipe.run (output, bake, photo_projection...); those a
        # replacement pipeline's `run` does not take are left out.
        self.run_options = _accepted_options(pipe, run_options or {})
        self.keep_loaded = keep_loaded
        self.scene_name = scene_name
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = (0.0, "starting")
        self._outcome = None  # ("ok", Result) | ("cancelled", msg) | ("error", msg)
        self.notices: list[str] = []
        self.state = "READY"
        self.message = ""
        self.collection_name: str | None = None

    # worker side: no bpy in here -------------------------------------------------------------
    def _on_progress(self, fraction: float, text: str) -> None:
        with self._lock:
            self._progress = (float(fraction), str(text))

    def _work(self, inputs: dict) -> None:
        def run():
            result = self.pipe.run(
                inputs["image"], inputs["masks"], names=inputs["names"],
                steps=self.steps, seed=self.seed, progress=self._on_progress,
                cancel=self._cancel.is_set, **self.run_options,
            )
            if self._cancel.is_set():
                raise Cancelled()
            return result

        outcome = worker_outcome(run, "3Dfy")
        with self._lock:
            self._outcome = outcome

    # main thread side ---------------------------------------------------------------------------
    def start(self) -> None:
        """Run the pipeline in a worker thread; poll with `poll_worker`."""
        global _active_job
        _active_job = self
        self.state = "RUNNING"
        self._thread = threading.Thread(target=self._work, args=(self.inputs,), name="sam3d-3dfy", daemon=True)
        self._thread.start()

    def run_blocking(self) -> None:
        """Run the pipeline on this thread (background mode, scripts); then call poll_worker."""
        global _active_job
        _active_job = self
        self.state = "RUNNING"
        self._work(self.inputs)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def progress(self) -> tuple[float, str]:
        with self._lock:
            return self._progress

    def poll_worker(self, context) -> str:
        """The step function: returns the state; builds the result when the worker is done.

        A cancel request wins over a finished result, so a cancelled job never touches the scene.
        """
        global _active_job
        if self.state != "RUNNING":
            return self.state
        if self._cancel.is_set():
            self.state, self.message = "CANCELLED", Cancelled().args[0]
        else:
            with self._lock:
                outcome = self._outcome
            if outcome is None:
                return "RUNNING"
            kind, payload = outcome
            if kind == "ok":
                self._build(context, payload)
            elif kind == "cancelled":
                self.state, self.message = "CANCELLED", payload
            else:
                self.state, self.message = "ERROR", payload
        self.inputs = None  # drop the arrays
        if not self.keep_loaded and not self.alive():
            release_pipeline()
        if _active_job is self and not self.alive():
            _active_job = None
        return self.state

    def _build(self, context, result) -> None:
        # The photo came from a bpy image: reuse it as the camera background (looked up by name,
        # never holding a bpy reference across modal steps, where undo could invalidate it).
        photo = bpy.data.images.get(self.inputs["photo_name"]) if self.inputs else None
        try:
            collection = bridge.build_result(result, context, photo_image=photo)
        except Exception as exc:  # noqa: BLE001 - build_result leaves nothing behind
            traceback.print_exc()
            self.state = "ERROR"
            self.message = f"Could not build the result in Blender: {' '.join(str(exc).split())[:300]}"
            return
        self.collection_name = collection.name
        self.result = result
        n = len(result.objects)
        secs = result.timings.get("total") if getattr(result, "timings", None) else None
        took = f" in {secs:.1f} s" if secs else ""
        self.state = "FINISHED"
        self.message = f"3Dfied {n} object{'s' if n != 1 else ''} on {result.device}{took}."
