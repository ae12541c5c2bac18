# SPDX-License-Identifier: GPL-3.0-or-later
"""Add-on preferences: the defaults a scene's SAM 3D settings fall back to."""

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty

from . import properties

# `bl_ext.<repo>.sam3d` -- the extension's own package (this module lives one level below it).
ADDON_PACKAGE = __package__.rpartition(".")[0]


class SAM3D_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    model: EnumProperty(
        name="Default Model", description="Model used when a scene asks for the default",
        items=properties.model_items_prefs,
    )
    device: EnumProperty(
        name="Default Device", description="Where inference runs when a scene asks for the default",
        items=properties.DEVICE_ITEMS, default="AUTO",
    )
    steps: IntProperty(
        name="Default Steps", description="Sampler steps (0: the model's own default)",
        default=0, min=0, max=200,
    )
    keep_loaded: BoolProperty(
        name="Keep Model Loaded",
        description="Keep the ONNX sessions between runs (faster repeat runs, holds memory)",
        default=True,
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "model")
        layout.prop(self, "device")
        layout.prop(self, "steps")
        layout.prop(self, "keep_loaded")


def get(context=None):
    """The preferences, or None when the add-on is registered outside the extension system."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon is not None else None
