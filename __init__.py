# SPDX-License-Identifier: GPL-3.0-or-later
"""SAM 3D for Blender: 3Dfy objects in a photo (extension entry point).

Only registration lives here.  The Blender UI is in `operators/` and `panels/`; the bpy-free
core (pipeline, ONNX Runtime, pose) is the `sam3d_addon` package next to this file, imported
relatively so the extension works under any repository module name (`bl_ext.<repo>.sam3d`).
"""

if __package__:  # Blender imports the extension as a package (bl_ext.<repo>.<id>)
    from . import operators, panels
# else: imported as a lone module, as pytest does with a checkout in a folder whose name is not
# a Python identifier (e.g. a "sam3d-blender" clone); there is nothing to register then.


def register():
    operators.register()
    panels.register()


def unregister():
    panels.unregister()
    operators.unregister()
