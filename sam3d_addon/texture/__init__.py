"""Texture & refinement, NumPy side: Gaussian PLY files, UV baking, photo projection, de-lighting.

No torch and no bpy here: the networks live in `sam3d_addon/nn/slat*.py`, the Blender material
wiring in section D of `sam3d_addon/blender_bridge.py`.
"""
