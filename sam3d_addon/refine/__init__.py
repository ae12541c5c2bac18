"""Scene refinement: observe -> act -> verify -> keep the best.

A policy (the built-in render-and-compare optimiser, or a VLM behind an OpenAI-compatible
endpoint) proposes *programs* in a small JSON action language (`actions.py`); each program is
validated against a schema, applied to a copy of a plain-data scene snapshot (`scene.py`),
checked by verifiers (`verify.py`) and the best candidate is kept when it improves the score
(`loop.py`).  Policy output is data, never code: nothing is ever exec'd or eval'd.

Plain NumPy/JSON only; the bpy side lives in Section C of `blender_bridge.py`.
"""
