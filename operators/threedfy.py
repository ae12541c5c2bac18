# SPDX-License-Identifier: GPL-3.0-or-later
"""The 3Dfy operator and its helpers (free model memory, mask list, cancel)."""

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..sam3d_addon.errors import Sam3DError
from . import job as job_mod
from .modal import Sam3DModalJob


class SAM3D_OT_threedfy(Sam3DModalJob, bpy.types.Operator):
    """3Dfy the masked objects of the photo: meshes, poses and the matched camera"""

    bl_idname = "sam3d.threedfy"
    bl_label = "3Dfy"
    # One undo step reverts a whole run: the modal operator builds the scene only when it
    # finishes, and Blender pushes a single undo step for it.
    bl_options = {"REGISTER", "UNDO"}

    blocking: BoolProperty(
        name="Blocking", default=False, options={"HIDDEN", "SKIP_SAVE"},
        description="Run in the foreground (always so in background mode and from scripts)",
    )
    model: StringProperty(
        name="Model", default="", options={"HIDDEN", "SKIP_SAVE"},
        description="Model name or directory, overriding the scene setting",
    )
    device: StringProperty(
        name="Device", default="", options={"HIDDEN", "SKIP_SAVE"},
        description="auto, cpu or cuda, overriding the scene setting",
    )

    job_label = "3Dfy"
    job_state_attr = "sam3d_job"
    cancel_keys = frozenset({"ESC", "RIGHTMOUSE"})

    @classmethod
    def poll(cls, context):
        if job_mod.busy():
            cls.poll_message_set("A 3Dfy job is still running")
            return False
        return context.scene is not None and hasattr(context.scene, "sam3d")

    def _prepare(self, context):
        """Inputs to NumPy and the pipeline, on the main thread.  None (reported) on error."""
        try:
            opts = job_mod.resolve_settings(context, self.model, self.device.upper() if self.device else "")
            inputs = job_mod.gather_inputs(context)
            pipe = job_mod.get_pipeline(opts["model"], opts["device"])
        except Sam3DError as exc:
            self.report({"ERROR"}, str(exc))
            return None
        return job_mod.ThreeDfyJob(pipe, inputs, steps=opts["steps"], seed=opts["seed"],
                                   keep_loaded=opts["keep_loaded"], scene_name=context.scene.name,
                                   run_options=opts["run_options"])

    def _finish(self, context, state: str, job) -> set:
        for text in job.notices:
            self.report({"INFO"}, text)
        if state == "FINISHED":
            self.report({"INFO"}, job.message)
            return {"FINISHED"}
        self.report({"WARNING"} if state == "CANCELLED" else {"ERROR"}, job.message)
        return {"CANCELLED"}

    def _step(self, context, job) -> str:
        return job.poll_worker(context)  # builds the result on the main thread once the worker is done

    def execute(self, context):
        return self._run_blocking(context)

    def invoke(self, context, event):
        if self.blocking or bpy.app.background:
            return self.execute(context)
        return self._run_modal(context)


class SAM3D_OT_cancel(bpy.types.Operator):
    """Cancel the running 3Dfy job; nothing is changed"""

    bl_idname = "sam3d.cancel"
    bl_label = "Cancel 3Dfy"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return job_mod.busy()

    def execute(self, context):
        running = job_mod.active_job()
        if running is not None:
            running.cancel()
        return {"FINISHED"}


class SAM3D_OT_free_memory(bpy.types.Operator):
    """Free the model's memory (ONNX sessions, GPU memory); the next run loads it again"""

    bl_idname = "sam3d.free_memory"
    bl_label = "Free Model Memory"

    @classmethod
    def poll(cls, context):
        if job_mod.busy():
            cls.poll_message_set("A 3Dfy job is running")
            return False
        return True

    def execute(self, context):
        if job_mod.release_pipeline():
            self.report({"INFO"}, "Model memory freed.")
        else:
            self.report({"INFO"}, "No model was loaded.")
        return {"FINISHED"}


class SAM3D_OT_mask_add(bpy.types.Operator):
    """Add a mask to the list of objects to 3Dfy"""

    bl_idname = "sam3d.mask_add"
    bl_label = "Add Mask"
    bl_options = {"REGISTER", "UNDO"}

    source: EnumProperty(
        name="Source",
        items=[
            ("EMPTY", "Empty Slot", "Add an empty slot; pick the mask image in the list"),
            ("EDITOR", "Image in Editor", "Add the image shown in the Image Editor as a mask"),
            ("NEW", "New Painted Mask", "A new black image the size of the photo, to paint white in Paint mode"),
        ],
        default="EMPTY",
    )
    image: StringProperty(name="Image", default="", options={"SKIP_SAVE"},
                          description="Name of an existing image to add as a mask")

    def execute(self, context):
        settings = context.scene.sam3d
        image = None
        if self.image:
            image = bpy.data.images.get(self.image)
            if image is None:
                self.report({"ERROR"}, f"No image named '{self.image}'.")
                return {"CANCELLED"}
        elif self.source == "EDITOR":
            image = job_mod.editor_image(context)
            if image is None:
                self.report({"ERROR"}, "No image is shown in the Image Editor.")
                return {"CANCELLED"}
        elif self.source == "NEW":
            photo = job_mod.photo_of(context)
            if photo is None or photo.size[0] == 0:
                self.report({"ERROR"}, "Pick the photo first: a painted mask gets the photo's size.")
                return {"CANCELLED"}
            w, h = photo.size
            stem = photo.name.rsplit(".", 1)[0]
            image = bpy.data.images.new(f"{stem}_mask{len(settings.masks) + 1}", w, h, alpha=False)
            image.generated_color = (0.0, 0.0, 0.0, 1.0)
            space = getattr(context, "space_data", None)
            if space is not None and space.type == "IMAGE_EDITOR":
                space.image = image
                space.ui_mode = "PAINT"
        item = settings.masks.add()
        item.image = image
        settings.active_mask_index = len(settings.masks) - 1
        return {"FINISHED"}


class SAM3D_OT_mask_remove(bpy.types.Operator):
    """Remove the active mask from the list (the image itself is kept)"""

    bl_idname = "sam3d.mask_remove"
    bl_label = "Remove Mask"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return hasattr(context.scene, "sam3d") and len(context.scene.sam3d.masks) > 0

    def execute(self, context):
        settings = context.scene.sam3d
        index = min(settings.active_mask_index, len(settings.masks) - 1)
        settings.masks.remove(index)
        settings.active_mask_index = max(0, min(index, len(settings.masks) - 1))
        return {"FINISHED"}


class SAM3D_OT_use_editor_image(bpy.types.Operator):
    """Use the image shown in the Image Editor as the photo"""

    bl_idname = "sam3d.use_editor_image"
    bl_label = "Use Image in Editor"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return job_mod.editor_image(context) is not None

    def execute(self, context):
        context.scene.sam3d.image = job_mod.editor_image(context)
        return {"FINISHED"}


classes = (
    SAM3D_OT_threedfy,
    SAM3D_OT_cancel,
    SAM3D_OT_free_memory,
    SAM3D_OT_mask_add,
    SAM3D_OT_mask_remove,
    SAM3D_OT_use_editor_image,
)
