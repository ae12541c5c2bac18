"""Shared test setup (keep minimal and generic).

Blender (bpy) reads its user resources -- preferences, extensions, scripts -- from
BLENDER_USER_RESOURCES when set.  It must be set before bpy is first imported, so it is done here
at conftest import time: tests never touch the user's ~/.config/blender.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

if "BLENDER_USER_RESOURCES" not in os.environ:
    _user_resources = tempfile.mkdtemp(prefix="sam3d_blender_user_")
    os.environ["BLENDER_USER_RESOURCES"] = _user_resources
    atexit.register(shutil.rmtree, _user_resources, ignore_errors=True)

# Training keeps encoded latents between runs (sam3d_addon/train/latent_cache.py); tests keep
# theirs in a temporary folder, never in the user's ~/.cache.
if "SAM3D_LATENT_CACHE" not in os.environ:
    _latent_cache = tempfile.mkdtemp(prefix="sam3d_latents_")
    os.environ["SAM3D_LATENT_CACHE"] = _latent_cache
    atexit.register(shutil.rmtree, _latent_cache, ignore_errors=True)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return REPO / "examples"


@pytest.fixture(scope="session")
def random_texture_model(tmp_path_factory) -> Path:
    """An untrained texture model of the real contract (ONNX + card), exported once per session."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from sam3d_addon.nn.texture_export import export_texture_random

    return export_texture_random(tmp_path_factory.mktemp("tex") / "tiny-texture-random", seed=1).path


def bind_operator_methods(stand_in, operator_class) -> None:
    """Give a plain stand-in object an operator's methods and plain class attributes, from the
    operator and its non-bpy bases (the Sam3DModalJob mixin): bpy cannot instantiate operators
    from Python, so tests drive these stand-ins."""
    import types

    for klass in reversed(operator_class.__mro__):
        if klass.__module__.startswith("bpy") or klass is object:
            continue
        for name, value in vars(klass).items():
            if isinstance(value, types.FunctionType):
                setattr(stand_in, name, types.MethodType(value, stand_in))
            elif not name.startswith(("__", "bl_")) and not isinstance(value, (classmethod, staticmethod)):
                setattr(stand_in, name, value)
