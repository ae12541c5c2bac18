"""SAM 3D for Blender: the bpy-free core.

Only `blender_bridge` imports bpy; everything else is NumPy / ONNX Runtime and runs in plain
Python.  Torch is imported only by `sam3d_addon.nn` and `sam3d_addon.train` (training/export).
"""

__version__ = "0.1.0"
