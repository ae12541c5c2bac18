# SPDX-License-Identifier: GPL-3.0-or-later
"""The "Refine scene" operator: observe -> act -> verify -> keep the best, one undo step per kept round.

The loop itself (sam3d_addon/refine) works on plain-data copies of the scene; the live scene
changes only when a round's best candidate is kept.  Each kept round becomes one undo step:
the previous kept round is pushed (`ed.undo_push`) just before the next one is applied, and the
last one is the operator's own undo step.  A round that fails or is cancelled leaves the scene
as it was.  It runs in the foreground (blocking), as in background mode and from scripts.
"""

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from ..sam3d_addon import blender_bridge as bridge
from ..sam3d_addon.errors import Sam3DError
from . import job as job_mod

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


class SAM3D_OT_refine(bpy.types.Operator):
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

    @classmethod
    def poll(cls, context):
        if job_mod.busy():
            cls.poll_message_set("A 3Dfy job is still running")
            return False
        return context.scene is not None

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        from ..sam3d_addon.refine.loop import refine

        scene = context.scene
        try:
            base = bridge.refine_read_scene(scene, masks=scene_masks(context))
            if not base.objects:
                raise Sam3DError("Nothing to refine: the scene has no visible mesh objects.")
            policy = make_policy(self.policy, self.vlm_url, self.vlm_model)
        except Sam3DError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}

        live = {"state": base, "round": None}  # what the live scene shows now

        def on_keep(index, state):
            if live["round"] is not None:  # close the previous kept round as its own undo step
                bpy.ops.ed.undo_push(message=f"Refine round {live['round'] + 1}")
            try:
                bridge.refine_apply(state, live["state"], scene)
            except Exception:
                bridge.refine_apply(live["state"], state, scene)  # put back what was there
                raise
            live.update(state=state, round=index)

        observe = None
        if self.policy == "VLM":
            def observe(state):
                return bridge.refine_render_views(state, scene, size=256)
        try:
            result = refine(base, policy, rounds=self.rounds, candidates=self.candidates, prompt=self.prompt,
                            log_dir=bpy.path.abspath(self.log_dir) if self.log_dir else None,
                            observe=observe, on_keep=on_keep)
        except Sam3DError as exc:
            self.report({"ERROR"}, str(exc))
            return {"FINISHED"} if live["round"] is not None else {"CANCELLED"}
        except Exception as exc:  # noqa: BLE001 - one line for the user, the rest in the console
            import traceback

            traceback.print_exc()
            self.report({"ERROR"}, f"Refine failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            return {"FINISHED"} if live["round"] is not None else {"CANCELLED"}
        for request in result.state.requests:
            self.report({"INFO"}, f"Policy asked to 3Dfy mask {request.get('reconstruct')!r} again; run 3Dfy on it.")
        if result.kept_rounds == 0:
            self.report({"INFO"}, f"Nothing changed ({result.stop_reason}); score {result.final.score:.3f}.")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Refined in {result.kept_rounds} round(s): score {result.initial.score:.3f} -> "
                              f"{result.final.score:.3f} ({result.stop_reason}).")
        return {"FINISHED"}


classes = (SAM3D_OT_refine,)
