# SPDX-License-Identifier: GPL-3.0-or-later
"""The "SAM 3D" sidebar tab, in the Image Editor and in the 3D Viewport."""

import bpy

from ..operators import job as job_mod
from ..sam3d_addon.blender_bridge import REFINE_PREVIEW_IMAGE


class SAM3D_UL_masks(bpy.types.UIList):
    """Mask images, one per object to 3Dfy."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.prop(item, "image", text="", icon="IMAGE_ALPHA")


def draw_sam3d(layout, context) -> None:
    scene = context.scene
    if not hasattr(scene, "sam3d"):
        layout.label(text="SAM 3D is not registered for this scene.")
        return
    settings = scene.sam3d
    state = context.window_manager.sam3d_job

    col = layout.column()
    col.label(text="Photo")
    col.template_ID(settings, "image", open="image.open")
    editor = job_mod.editor_image(context)
    if editor is not None and editor != settings.image:
        col.operator("sam3d.use_editor_image", icon="IMAGE_DATA")
    elif settings.image is None and editor is None:
        col.label(text="Open a photo or pick one above", icon="INFO")

    col.separator()
    col.label(text="Masks (one per object)")
    row = col.row()
    row.template_list("SAM3D_UL_masks", "", settings, "masks", settings, "active_mask_index", rows=3)
    side = row.column(align=True)
    side.operator("sam3d.mask_add", icon="ADD", text="").source = "EMPTY"
    side.operator("sam3d.mask_remove", icon="REMOVE", text="")
    side.separator()
    side.operator("sam3d.mask_add", icon="BRUSH_DATA", text="").source = "NEW"
    if editor is not None:
        side.operator("sam3d.mask_add", icon="IMAGE_DATA", text="").source = "EDITOR"

    col.separator()
    sub = col.column()
    sub.use_property_split = True
    sub.use_property_decorate = False
    sub.prop(settings, "model")
    sub.prop(settings, "device")
    sub.prop(settings, "steps")
    sub.prop(settings, "seed")
    sub.prop(settings, "samples")
    sub.prop(settings, "output")
    sub.prop(settings, "fit_layout")
    texture = sub.column(heading="Texture")
    texture.prop(settings, "bake_texture", text="Bake")
    projection = texture.row()
    projection.active = settings.bake_texture  # the photo is projected into the baked texture
    projection.prop(settings, "photo_projection")

    col.separator()
    if state.running:
        _draw_progress(col, state, "Working")
        col.operator("sam3d.cancel", icon="CANCEL", text="Cancel (Esc)")
    else:
        big = col.row()
        big.scale_y = 1.5
        big.operator("sam3d.threedfy", icon="MESH_MONKEY")
        refine = getattr(context.window_manager, "sam3d_refine", None)
        if refine is not None and refine.running:
            _draw_progress(col, refine, "Refining")
            col.operator("sam3d.refine_cancel", icon="CANCEL", text="Stop Refining (Esc)")
        else:
            col.operator("sam3d.refine", icon="MOD_PHYSICS")
        preview = bpy.data.images.get(REFINE_PREVIEW_IMAGE)
        if preview is not None:  # the last kept refinement round, seen through the photo camera
            col.label(text="Last refined view:")
            col.template_icon(icon_value=preview.preview_ensure().icon_id, scale=8.0)
    col.operator("sam3d.free_memory", icon="TRASH")


def _draw_progress(col, job_state, default_text: str) -> None:
    """A running job's progress bar (a label before Blender 4.0) from its window-manager state."""
    text = f"{job_state.status or default_text} ({job_state.progress:.0%})"
    if hasattr(col, "progress"):  # Blender 4.0+
        col.progress(factor=job_state.progress, type="BAR", text=text)
    else:
        col.label(text=text)


class SAM3D_PT_image_editor(bpy.types.Panel):
    bl_label = "SAM 3D"
    bl_idname = "SAM3D_PT_image_editor"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "SAM 3D"

    def draw(self, context):
        draw_sam3d(self.layout, context)


class SAM3D_PT_view3d(bpy.types.Panel):
    bl_label = "SAM 3D"
    bl_idname = "SAM3D_PT_view3d"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SAM 3D"

    def draw(self, context):
        draw_sam3d(self.layout, context)


classes = (SAM3D_UL_masks, SAM3D_PT_image_editor, SAM3D_PT_view3d)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
