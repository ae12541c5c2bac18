# SPDX-License-Identifier: GPL-3.0-or-later
"""The "Refine scene" operator: observe -> act -> verify -> keep the best, one undo step per kept round.

The loop itself (sam3d_addon/refine) works on plain-data copies of the scene; the live scene
changes only when a round's best candidate is kept.  Each kept round becomes one undo step:
the previous kept round is pushed (`ed.undo_push`) just before the next one is applied, and the
last one is the operator's own undo step.  A round that fails or is cancelled leaves the scene
as it was.

Like 3Dfy it runs as a modal operator from the UI: `RefineJob` runs the NumPy loop (and the
VLM's HTTP calls) in a worker thread, and everything that touches bpy -- applying a kept round,
rendering the views a VLM observes -- is handed to the main thread as a request, which the
modal timer step (`RefineJob.step`) runs in order while the worker waits for it.  Progress goes
to the window manager's `sam3d_refine` (the panel's bar); Esc cancels: the round in progress is
discarded, rounds already kept stay (each one undo step).  In background mode, from scripts
(`blocking=True`) and when re-run from the redo panel it runs in the foreground (blocking).
"""

import threading
from collections import deque

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from ..sam3d_addon import blender_bridge as bridge
from ..sam3d_addon.errors import Cancelled, Sam3DError
from . import job as job_mod
from .modal import Sam3DModalJob

POLICY_ITEMS = [
    ("BUILTIN", "Built-in", "Offline render-and-compare layout fitting plus plausibility fixes"),
    ("VLM", "VLM", "A vision-language model behind an OpenAI-compatible endpoint"),
]


def scene_masks(context) -> dict:
    """The SAM 3D panel's masks as NumPy arrays, keyed by their image name's stem."""
    settings = getattr(context.scene, "sam3d", None)
    masks = {}
    if settings is not None:
        for item in settings.masks:
            if item.image is not None:
                try:
                    masks[job_mod._stem(item.image.name)] = job_mod.mask_array(item.image)
                except Sam3DError:
                    continue  # a mask without pixels: that object is refined without photo term
    return masks


def make_policy(kind: str, vlm_url: str = "", vlm_model: str = "", seed: int = 0):
    from ..sam3d_addon.refine.policy_builtin import BuiltinPolicy

    if kind.upper() == "VLM":
        from ..sam3d_addon.refine import policy_vlm

        return policy_vlm.VLMPolicy(vlm_url or policy_vlm.DEFAULT_URL, vlm_model or policy_vlm.DEFAULT_MODEL,
                                    online_access=bool(getattr(bpy.app, "online_access", False)))
    return BuiltinPolicy(seed=seed)


_active_job = None  # the RefineJob whose worker is running (at most one)


def busy() -> bool:
    return _active_job is not None and _active_job.alive()


def active_job():
    return _active_job


def _scene_shows(state) -> bool:
    """Does the live scene still show `state` (no object moved or removed by the user)?"""
    for name, ob_state in state.objects.items():
        ob = bpy.data.objects.get(name)
        if ob is None or not np.allclose(np.array(ob.matrix_world), ob_state.matrix_world, atol=1e-4):
            return False
    return True


class RefineJob:
    """One refinement run.  States: 'READY' -> 'RUNNING' -> 'FINISHED' | 'CANCELLED' | 'ERROR'.

    Threading rules: `_work` (the worker) runs the NumPy loop and never touches bpy; what needs
    bpy (`_apply`, `_render`) goes through `_on_main`, which queues a request and waits; `step`
    (main thread) runs the queued requests in order and publishes the outcome.  Blocking runs
    call everything on the calling thread.
    """

    def __init__(self, base, policy, scene_name: str, *, rounds: int, candidates: int, prompt: str = "",
                 log_dir=None, render_views: bool = False):
        self.base = base
        self.policy = policy
        self.scene_name = scene_name
        self.rounds, self.candidates, self.prompt, self.log_dir = rounds, candidates, prompt, log_dir
        self.render_views = render_views
        # The panel's picture of the last kept round (a Workbench render, ~1 s): UI runs only.
        self.preview = not bpy.app.background
        self.live = {"state": base, "round": None}  # what the live scene shows now
        self.kept = 0
        self.result = None
        self.state = "READY"
        self.message = ""
        self.notices: list[str] = []
        self._blocking = False
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._requests: deque = deque()
        self._progress = (0.0, "starting")
        self._outcome = None  # ("ok", RefineResult) | ("cancelled", msg) | ("error", msg)
        self._thread: threading.Thread | None = None

    # main thread only: the bpy side --------------------------------------------------------------
    def _scene(self):
        scene = bpy.data.scenes.get(self.scene_name)  # by name: never hold a bpy reference across steps
        if scene is None:
            raise Sam3DError(f"The scene '{self.scene_name}' is gone; refinement stopped.")
        return scene

    def _apply(self, index: int, state) -> None:
        """Write a kept round into the scene; the previous kept round becomes its own undo step."""
        scene = self._scene()
        live = self.live
        if not self._blocking and not _scene_shows(live["state"]):
            raise Sam3DError("The scene was edited while refining; stopped (rounds kept so far stay).")
        if live["round"] is not None:  # close the previous kept round as its own undo step
            bpy.ops.ed.undo_push(message=f"Refine round {live['round'] + 1}")
        try:
            bridge.refine_apply(state, live["state"], scene)
        except Exception:
            bridge.refine_apply(live["state"], state, scene)  # put back what was there
            raise
        live.update(state=state, round=index)
        self.kept += 1
        if self.preview:
            bridge.refine_update_preview(state, scene)

    def _render(self, state) -> list:
        return bridge.refine_render_views(state, self._scene(), size=256)

    # worker side: no bpy in here ----------------------------------------------------------------
    def _on_main(self, fn, *args):
        """Run fn(*args) on the main thread (the next `step`) and wait for its result."""
        if self._blocking:
            return fn(*args)
        box = {"event": threading.Event()}
        with self._lock:
            self._requests.append((fn, args, box))
        while not box["event"].wait(0.02):
            if self._cancel.is_set():
                raise Cancelled()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _on_progress(self, fraction: float, text: str) -> None:
        with self._lock:
            self._progress = (float(fraction), str(text))

    def _work(self) -> None:
        from ..sam3d_addon.refine.loop import refine

        observe = (lambda st: self._on_main(self._render, st)) if self.render_views else None
        outcome = job_mod.worker_outcome(
            lambda: refine(self.base, self.policy, rounds=self.rounds, candidates=self.candidates,
                           prompt=self.prompt, log_dir=self.log_dir, observe=observe,
                           on_keep=lambda i, st: self._on_main(self._apply, i, st),
                           cancel=self._cancel.is_set, progress=self._on_progress),
            "Refine")
        with self._lock:
            self._outcome = outcome

    # main thread: control -----------------------------------------------------------------------
    def start(self) -> None:
        """Run the loop in a worker thread; drive it with `step` (the modal timer)."""
        global _active_job
        _active_job = self
        self.state = "RUNNING"
        self._thread = threading.Thread(target=self._work, name="sam3d-refine", daemon=True)
        self._thread.start()

    def run_blocking(self) -> None:
        """Run the loop on this thread (background mode, scripts); then call `step` once."""
        self._blocking = True
        self.state = "RUNNING"
        self._work()

    def cancel(self) -> None:
        self._cancel.set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def progress(self) -> tuple[float, str]:
        with self._lock:
            return self._progress

    def step(self) -> str:
        """The modal step: run the worker's bpy requests, return the state ('RUNNING' until done).

        A cancel request wins: queued requests are dropped (the worker gets Cancelled), so a
        cancelled round never reaches the scene."""
        global _active_job
        if self.state != "RUNNING":
            return self.state
        while not self._cancel.is_set():
            with self._lock:
                request = self._requests.popleft() if self._requests else None
            if request is None:
                break
            fn, args, box = request
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the worker, which reports it
                box["error"] = exc
            box["event"].set()
        with self._lock:
            outcome = self._outcome
        if self._cancel.is_set():
            with self._lock:
                self._requests.clear()
            self.state = "CANCELLED"
            self.message = (f"Cancelled; the {self.kept} kept round(s) stay (undo reverts each)." if self.kept
                            else Cancelled().args[0])
        elif outcome is None:
            return "RUNNING"
        else:
            kind, payload = outcome
            if kind == "ok":
                self.result = payload
                self.state = "FINISHED"
            elif kind == "cancelled":
                self.state, self.message = "CANCELLED", payload
            else:
                self.state, self.message = "ERROR", payload
        if _active_job is self:
            _active_job = None
        return self.state


class SAM3D_OT_refine(Sam3DModalJob, bpy.types.Operator):
    """Refine the scene's layout (and materials, lights) with the built-in policy or a VLM"""

    bl_idname = "sam3d.refine"
    bl_label = "Refine Scene"
    bl_options = {"REGISTER", "UNDO"}

    prompt: StringProperty(name="Prompt", default="", description="What the scene should look like")
    policy: EnumProperty(name="Policy", items=POLICY_ITEMS, default="BUILTIN")
    rounds: IntProperty(name="Rounds", default=3, min=1, max=20)
    candidates: IntProperty(name="Candidates", default=4, min=1, max=16,
                            description="Programs tried per round; the best one is kept")
    vlm_url: StringProperty(name="VLM URL", default="", description="OpenAI-compatible base URL (default: local)")
    vlm_model: StringProperty(name="VLM Model", default="")
    log_dir: StringProperty(name="Log Directory", default="", subtype="DIR_PATH",
                            description="Write each round as JSON lines and PNGs here")
    blocking: BoolProperty(name="Blocking", default=False, options={"HIDDEN", "SKIP_SAVE"},
                           description="Run in the foreground (always so in background mode)")
    # set by invoke (the dialog's OK then runs execute): run modal; cleared once it started, so
    # a re-run from the redo panel is blocking
    run_modal: BoolProperty(name="Run Modal", default=False, options={"HIDDEN", "SKIP_SAVE"})

    job_label = "Refine"
    job_state_attr = "sam3d_refine"

    @classmethod
    def poll(cls, context):
        if job_mod.busy():
            cls.poll_message_set("A 3Dfy job is still running")
            return False
        if busy():
            cls.poll_message_set("Refinement is still running")
            return False
        return context.scene is not None

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        self.run_modal = not self.blocking
        return context.window_manager.invoke_props_dialog(self)

    def _prepare(self, context):
        """Scene snapshot, masks and policy, on the main thread.  None (reported) on error."""
        scene = context.scene
        try:
            base = bridge.refine_read_scene(scene, masks=scene_masks(context))
            if not base.objects:
                raise Sam3DError("Nothing to refine: the scene has no visible mesh objects.")
            policy = make_policy(self.policy, self.vlm_url, self.vlm_model)
        except Sam3DError as exc:
            self.report({"ERROR"}, str(exc))
            return None
        return RefineJob(base, policy, scene.name, rounds=self.rounds, candidates=self.candidates,
                         prompt=self.prompt, log_dir=bpy.path.abspath(self.log_dir) if self.log_dir else None,
                         render_views=self.policy == "VLM")

    def _finish(self, context, state: str, job) -> set:
        """Reports; FINISHED (an undo step) when the scene changed, else CANCELLED."""
        changed = {"FINISHED"} if job.kept else {"CANCELLED"}
        if state == "CANCELLED":
            self.report({"WARNING"}, job.message)
            return changed
        if state == "ERROR":
            self.report({"ERROR"}, job.message)
            return changed
        result = job.result
        for request in result.state.requests:
            self.report({"INFO"}, f"Policy asked to 3Dfy mask {request.get('reconstruct')!r} again; run 3Dfy on it.")
        if result.kept_rounds == 0:
            self.report({"INFO"}, f"Nothing changed ({result.stop_reason}); score {result.final.score:.3f}.")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Refined in {result.kept_rounds} round(s): score {result.initial.score:.3f} -> "
                              f"{result.final.score:.3f} ({result.stop_reason}).")
        return {"FINISHED"}

    def _step(self, context, job) -> str:
        return job.step()  # applies kept rounds / renders views for the worker on the main thread

    def execute(self, context):
        if self.run_modal and not self.blocking and not bpy.app.background and context.window is not None:
            self.run_modal = False  # the redo panel re-runs blocking
            return self._run_modal(context)
        return self._run_blocking(context)


class SAM3D_OT_refine_cancel(bpy.types.Operator):
    """Stop the running refinement: the round in progress is discarded, kept rounds stay"""

    bl_idname = "sam3d.refine_cancel"
    bl_label = "Cancel Refine"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return busy()

    def execute(self, context):
        running = active_job()
        if running is not None:
            running.cancel()
        return {"FINISHED"}


classes = (SAM3D_OT_refine, SAM3D_OT_refine_cancel)
