"""Build the Blender extension zip(s): `python -m sam3d_addon.build_extension --out dist`.

The repository root is the extension package (blender_manifest.toml + __init__.py).  Building:

1. copy the package (minus the manifest's [build] paths_exclude_pattern) into a temporary dir,
2. download the runtime wheels Blender's bundled Python lacks -- ONNX Runtime (CPU, or GPU with
   --gpu) and the pure dependencies of the core -- for each platform and Blender's Python
   version with `pip download --only-binary=:all: --no-deps --python-version ... --platform ...`
   (versions pinned from requirements.lock),
3. write `platforms` and `wheels` into the temporary copy of the manifest,
4. run Blender's own extension tool (`blender_ext.py build --split-platforms`, shipped inside
   the bpy wheel and every Blender) -- one zip per platform.

Wheels are never committed.  `--no-wheels` builds a single zip without runtime wheels (for
tests and for users who install onnxruntime themselves); it needs no network.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "blender_manifest.toml"

# Blender 4.2 LTS through 5.0 bundle CPython 3.11 (and NumPy, so NumPy is never bundled).
DEFAULT_PYTHON_VERSIONS = ("3.11",)

# Blender platform -> pip platform tags (pip does not expand manylinux_2_x tags itself).
_MANYLINUX = [f"manylinux_2_{v}" for v in range(28, 16, -1)] + ["manylinux2014"]
PLATFORM_TAGS = {
    "windows-x64": ["win_amd64"],
    "windows-arm64": ["win_arm64"],
    "linux-x64": [f"{t}_x86_64" for t in _MANYLINUX],
    "macos-arm64": ["macosx_14_0_arm64"],  # pip expands macOS tags down to 11.0
    "macos-x64": ["macosx_14_0_x86_64"],
}
DEFAULT_PLATFORMS = ("windows-x64", "linux-x64", "macos-arm64")
GPU_PLATFORMS = ("windows-x64", "linux-x64")  # onnxruntime-gpu exists only there

# What the core imports at run time that Blender's Python lacks (NumPy is bundled with Blender).
RUNTIME_PACKAGES = (
    "flatbuffers", "protobuf", "packaging",              # onnxruntime's own requirements
    "pillow",                                            # photo / mask reading
    "scipy", "scikit-image", "networkx", "imageio",      # meshing (skimage and its requirements)
    "tifffile", "lazy-loader",
    "trimesh",
)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(lock: Path = REPO / "requirements.lock") -> dict[str, str]:
    pins = {}
    if lock.is_file():
        for line in lock.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[_norm(name)] = version.strip()
    return pins


def requirements(gpu: bool = False, pins: dict[str, str] | None = None) -> list[str]:
    pins = pinned_versions() if pins is None else pins
    ort = "onnxruntime-gpu" if gpu else "onnxruntime"
    out = []
    for name in (ort, *RUNTIME_PACKAGES):
        version = pins.get(_norm(name)) or (pins.get("onnxruntime") if name == "onnxruntime-gpu" else None)
        out.append(f"{name}=={version}" if version else name)
    return out


# -- Blender's extension tool -------------------------------------------------------------------

def find_blender_ext() -> Path:
    """blender_ext.py from the installed bpy wheel (without importing bpy)."""
    spec = importlib.util.find_spec("bpy")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        found = sorted(Path(root).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise SystemExit("blender_ext.py not found: install the bpy wheel (pip install bpy) or pass --blender-ext.")


def _load_blender_ext(path: Path):
    spec = importlib.util.spec_from_file_location("_sam3d_blender_ext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_blender_ext(args: list[str], blender_ext: Path | None = None) -> subprocess.CompletedProcess:
    tool = blender_ext or find_blender_ext()
    return subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)


def validate(source: Path = REPO, blender_ext: Path | None = None) -> subprocess.CompletedProcess:
    """`blender_ext.py validate` on a source directory or a built zip."""
    return run_blender_ext(["validate", str(source)], blender_ext)


# -- staging ----------------------------------------------------------------------------------

def _exclude_patterns(manifest_text: str) -> list[str]:
    import tomllib

    data = tomllib.loads(manifest_text)
    return list(data.get("build", {}).get("paths_exclude_pattern", []))


def stage_source(dest: Path, source: Path = REPO, blender_ext: Path | None = None) -> None:
    """Copy the package into `dest`, skipping what the manifest's build excludes anyway."""
    tool = _load_blender_ext(blender_ext or find_blender_ext())
    matcher = tool.PathPatternMatch(_exclude_patterns((source / MANIFEST).read_text()))
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        if any(matcher.test_path("/".join(rel.split("/")[: i + 1]) + "/")
               for i in range(rel.count("/"))):
            continue  # inside an excluded directory
        if path.is_dir():
            continue
        if matcher.test_path(rel):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def download_wheels(dest: Path, platforms, python_versions, gpu: bool = False,
                    pip: list[str] | None = None) -> list[Path]:
    """pip download the runtime wheels for every platform and Python version into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = pip or [sys.executable, "-m", "pip"]
    reqs_cpu, reqs_gpu = requirements(False), requirements(True)
    for platform in platforms:
        if platform not in PLATFORM_TAGS:
            raise SystemExit(f"Unknown platform {platform!r}; known: {', '.join(PLATFORM_TAGS)}.")
        reqs = reqs_gpu if gpu and platform in GPU_PLATFORMS else reqs_cpu
        for py in python_versions:
            cmd = [*pip, "download", "--only-binary=:all:", "--no-deps", "--dest", str(dest),
                   "--python-version", py, "--implementation", "cp", "--abi", f"cp{py.replace('.', '')}"]
            for tag in PLATFORM_TAGS[platform]:
                cmd += ["--platform", tag]
            cmd += reqs
            print(f"build_extension: wheels for {platform}, Python {py}", file=sys.stderr)
            subprocess.run(cmd, check=True)
    return sorted(dest.glob("*.whl"))


def manifest_with_wheels(text: str, wheels: list[str], platforms: list[str]) -> str:
    """Insert `platforms` and `wheels` as top-level keys (before the first [table])."""
    lines = text.splitlines()
    at = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
    block = ["platforms = [" + ", ".join(f'"{p}"' for p in platforms) + "]", "wheels = ["]
    block += [f'  "./{w}",' for w in wheels] + ["]", ""]
    return "\n".join(lines[:at] + block + lines[at:]) + "\n"


# -- build --------------------------------------------------------------------------------------

def build(out_dir: str | Path, gpu: bool = False, platforms=None, python_versions=DEFAULT_PYTHON_VERSIONS,
          wheels: bool = True, source: Path = REPO, blender_ext: Path | None = None) -> list[Path]:
    """Build the extension zip(s) into `out_dir`; returns their paths."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tool = blender_ext or find_blender_ext()
    before = set(out_dir.glob("*.zip"))
    if not wheels:
        proc = run_blender_ext(["build", "--source-dir", str(source), "--output-dir", str(out_dir)], tool)
        if proc.returncode != 0:
            raise RuntimeError(f"blender_ext build failed:\n{proc.stdout}{proc.stderr}")
    else:
        platforms = list(platforms or (GPU_PLATFORMS if gpu else DEFAULT_PLATFORMS))
        with tempfile.TemporaryDirectory(prefix="sam3d_ext_") as tmp:
            stage = Path(tmp) / "sam3d"
            stage.mkdir()
            stage_source(stage, source, tool)
            found = download_wheels(stage / "wheels", platforms, python_versions, gpu=gpu)
            rel = [f"wheels/{w.name}" for w in found]
            text = manifest_with_wheels((source / MANIFEST).read_text(), rel, platforms)
            (stage / MANIFEST).write_text(text)
            proc = run_blender_ext(["build", "--source-dir", str(stage), "--output-dir", str(out_dir),
                                    "--split-platforms"], tool)
            if proc.returncode != 0:
                raise RuntimeError(f"blender_ext build failed:\n{proc.stdout}{proc.stderr}")
    built = sorted(set(out_dir.glob("*.zip")) - before) or sorted(out_dir.glob("*.zip"))
    return built


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sam3d_addon.build_extension", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="dist", help="output directory for the zip(s)")
    p.add_argument("--gpu", action="store_true", help="bundle onnxruntime-gpu (Windows/Linux x64 only)")
    p.add_argument("--platforms", nargs="+", choices=sorted(PLATFORM_TAGS), help="Blender platforms")
    p.add_argument("--python-versions", nargs="+", default=list(DEFAULT_PYTHON_VERSIONS),
                   help="Python versions of the targeted Blender releases (default: 3.11, Blender 4.2-5.0)")
    p.add_argument("--no-wheels", action="store_true", help="no runtime wheels (offline; one zip)")
    p.add_argument("--blender-ext", type=Path, help="path to blender_ext.py (default: from the bpy wheel)")
    args = p.parse_args(argv)
    tool = args.blender_ext or find_blender_ext()
    check = validate(REPO, tool)
    if check.returncode != 0:
        print(check.stdout + check.stderr, file=sys.stderr)
        return 1
    try:
        zips = build(args.out, gpu=args.gpu, platforms=args.platforms, python_versions=args.python_versions,
                     wheels=not args.no_wheels, blender_ext=tool)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"build_extension: {exc}", file=sys.stderr)
        return 1
    for z in zips:
        print(z)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
