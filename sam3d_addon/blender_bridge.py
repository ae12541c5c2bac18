"""The Blender bridge: the only module of the core that imports bpy.

Everything that touches Blender data lives here, on the main thread only:
building a 3Dfy result (meshes via foreach_set, one collection per run, the matched camera with
the photo as background), rendering and exporting, and the synthetic data engine's renders.
The rest of the core hands plain NumPy arrays and dicts to these functions.
"""

from __future__ import annotations

import bpy  # noqa: F401  (the one bpy import of sam3d_addon)
import numpy as np  # noqa: F401

# ============================================================================================
# Section A: 3Dfy results in a scene (owner: add-on/3Dfy work)
# ============================================================================================

# (end of section A)

# ============================================================================================
# Section B: synthetic data engine renders (owner: data engine work)
# ============================================================================================

# (end of section B)
