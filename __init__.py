# SPDX-License-Identifier: GPL-3.0-or-later
"""SAM 3D for Blender: 3Dfy objects in a photo (extension entry point).

Only registration lives here.  The Blender UI is in `operators/` and `panels/`; the bpy-free
core (pipeline, ONNX Runtime, pose) is the `sam3d_addon` package next to this file, imported
relatively so the extension works under any repository module name (`bl_ext.<repo>.sam3d`).
"""

from . import operators, panels


def register():
    operators.register()
    panels.register()


def unregister():
    panels.unregister()
    operators.unregister()
