# SPDX-License-Identifier: GPL-3.0-or-later
"""Operators, properties and preferences of the SAM 3D extension."""

import bpy

from . import job, preferences, properties, refine, threedfy

_classes = (
    *properties.classes,
    preferences.SAM3D_AddonPreferences,
    *threedfy.classes,
    *refine.classes,
)


def register():
    for cls in _classes:
        bpy.utils.register_class(cls)
    properties.register_pointers()


def unregister():
    job.shutdown()
    properties.unregister_pointers()
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
