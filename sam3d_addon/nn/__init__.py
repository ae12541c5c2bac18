"""PyTorch side of the geometry model: architecture, checkpoints, ONNX export, speed bench.

Together with the training code, the only package that imports torch; the inference path (ONNX
Runtime) never imports it.
"""

from .bundle import ModelBundle, build_models
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, get_config
from .export import export_checkpoint, export_onnx, export_random
from .speed import bench_speed

__all__ = [
    "ModelBundle", "ModelConfig", "bench_speed", "build_models", "export_checkpoint", "export_onnx",
    "export_random", "get_config", "load_checkpoint", "save_checkpoint",
]
