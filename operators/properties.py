# SPDX-License-Identifier: GPL-3.0-or-later
"""Scene settings (image, masks, model...) and the window manager's job state.

Scene settings are saved with the .blend and take part in undo; the job state (progress bar,
status text) lives on the window manager, so progress updates never create undo steps.
"""

import bpy
from bpy.props import (
    BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
    StringProperty,
)

from ..sam3d_addon import contract

DEVICE_ITEMS = [
    ("AUTO", "Auto", "CUDA when available, else CPU"),
    ("CPU", "CPU", "Run on the CPU"),
    ("CUDA", "CUDA", "Run on an NVIDIA GPU (needs the GPU build of the extension)"),
]
SCENE_DEVICE_ITEMS = [("DEFAULT", "Default", "Use the device set in the add-on preferences")] + DEVICE_ITEMS

# Dynamic enum items must stay referenced from Python while Blender uses them.
_model_item_cache: dict[str, list] = {}


def _model_names() -> list[str]:
    names = contract.available_geometry_models()
    if contract.DEFAULT_MODEL in names:
        names.remove(contract.DEFAULT_MODEL)
        names.insert(0, contract.DEFAULT_MODEL)
    return names


def model_items_prefs(self, context):
    items = [(n, n, f"Model '{n}' shipped in models/") for n in _model_names()]
    if not items:
        items = [(contract.DEFAULT_MODEL, contract.DEFAULT_MODEL, "No model installed")]
    _model_item_cache["prefs"] = items
    return items


def model_items_scene(self, context):
    items = [("DEFAULT", "Default", "Use the model set in the add-on preferences")]
    items += [(n, n, f"Model '{n}' shipped in models/") for n in _model_names()]
    _model_item_cache["scene"] = items
    return items


class SAM3D_MaskItem(bpy.types.PropertyGroup):
    """One object to 3Dfy: a mask image, white (or opaque) where the object is."""

    image: PointerProperty(name="Mask", type=bpy.types.Image,
                           description="Mask image: white (or opaque) pixels mark the object")


class SAM3D_SceneSettings(bpy.types.PropertyGroup):
    image: PointerProperty(name="Photo", type=bpy.types.Image,
                           description="The photo to 3Dfy (defaults to the image shown in the Image Editor)")
    masks: CollectionProperty(type=SAM3D_MaskItem)
    active_mask_index: IntProperty(name="Active Mask", default=0, min=0)
    model: EnumProperty(name="Model", items=model_items_scene,
                        description="Geometry model (from the extension's models/ directory)")
    device: EnumProperty(name="Device", items=SCENE_DEVICE_ITEMS, default="DEFAULT")
    steps: IntProperty(name="Steps", default=0, min=0, max=200,
                       description="Sampler steps (0: the default from preferences / the model)")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed of the sampler")
    samples: IntProperty(name="Samples", default=0, min=0, max=16,
                         description="Samples averaged into each shape (0: the model's default); more is "
                                     "steadier and slower")
    output: EnumProperty(
        name="Output", default="MESH",
        items=[
            ("MESH", "Mesh", "A textured mesh per object"),
            ("GAUSSIANS", "Gaussians", "3D Gaussians per object, shown as a labelled point cloud "
                                       "(needs a texture model)"),
            ("BOTH", "Both", "The textured mesh and the Gaussians point cloud (needs a texture model)"),
        ],
        description="What each object becomes",
    )
    bake_texture: BoolProperty(
        name="Bake Texture", default=True,
        description="UV-unwrap each coloured mesh and bake its colours into a packed image texture "
                    "(off: the material reads the colour attribute)",
    )
    fit_layout: BoolProperty(
        name="Fit Layout", default=True,
        description="After sampling, fit each object's position, size and turn to its mask so it lies "
                    "over the photo (about 30 s per object on a CPU; off: the model's own pose)",
    )
    photo_projection: BoolProperty(
        name="Photo Projection", default=False,
        description="Bake the photo onto the side of each mesh the camera sees.  Only as good as the "
                    "pose: with the tiny model the photo often lands on the wrong surfaces",
    )


class SAM3D_JobState(bpy.types.PropertyGroup):
    running: BoolProperty(name="Running", default=False)
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    status: StringProperty(name="Status", default="")


class SAM3D_RefineState(bpy.types.PropertyGroup):
    """The running "Refine Scene" operator's progress (the panel's bar)."""

    running: BoolProperty(name="Running", default=False)
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    status: StringProperty(name="Status", default="")


classes = (SAM3D_MaskItem, SAM3D_SceneSettings, SAM3D_JobState, SAM3D_RefineState)


def register_pointers():
    bpy.types.Scene.sam3d = PointerProperty(type=SAM3D_SceneSettings)
    bpy.types.WindowManager.sam3d_job = PointerProperty(type=SAM3D_JobState)
    bpy.types.WindowManager.sam3d_refine = PointerProperty(type=SAM3D_RefineState)


def unregister_pointers():
    del bpy.types.WindowManager.sam3d_refine
    del bpy.types.WindowManager.sam3d_job
    del bpy.types.Scene.sam3d
