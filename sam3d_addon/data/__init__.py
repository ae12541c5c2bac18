"""Synthetic data engine for the geometry model (`sam3d data --out DIR --n N`).

Modules (all NumPy / trimesh / manifold3d; only `sam3d_addon.blender_bridge` touches bpy):
  shapes       procedural object vocabulary -> watertight canonical meshes
  occupancy    solid 32^3 ground-truth occupancy of a canonical mesh
  camera       pinhole projection, silhouettes, point maps (PyTorch3D camera frame)
  scene        random placement, camera, lighting, materials, occluder
  backgrounds  procedural backgrounds and render-paste compositing
  engine       per-sample pipeline, `generate`, `main_data` (imports the bridge lazily)
  dataset      reader: list_samples, load_sample, load_meta (needs neither bpy nor manifold3d)
  make_example the bundled example photo in examples/

Importing this package imports none of them.
"""


def main_data(args=None, **kwargs) -> int:
    """`sam3d data` entry point; see engine.main_data."""
    from .engine import main_data as run

    return run(args, **kwargs)


def add_data_arguments(parser) -> None:
    from .engine import add_data_arguments as add

    add(parser)
