"""ONNX export of the `tiny` geometry model: ONNX Runtime reproduces torch, the card is valid."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from sam3d_addon.contract import CONDITION_INPUTS, MODALITIES, STAGES, load_card  # noqa: E402
from sam3d_addon.nn.bundle import build_models  # noqa: E402
from sam3d_addon.nn.checkpoint import save_checkpoint  # noqa: E402
from sam3d_addon.nn.export import example_inputs, export_checkpoint, stage_graphs  # noqa: E402
from sam3d_addon.nn.fp16_weights import round_module_fp16_  # noqa: E402
from sam3d_addon.nn.speed import bench_speed  # noqa: E402

TOLERANCE = 1e-4
POSE_STATS = {
    "rotation_mean": [0.1, 0.0, 0.0, 0.0, 0.0, 0.5], "rotation_std": [0.6] * 6,
    "log_scale_mean": [-0.5] * 3, "log_scale_std": [0.3] * 3,
    "translation_mean": [0.0, 0.0, 3.0], "translation_std": [0.5] * 3,
    "camera_frame": "pytorch3d",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two cores shared with other jobs: torch's spinning OpenMP threads slow down many times
    # when oversubscribed, one thread per runtime keeps the timings steady.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    """A random tiny model saved as a training checkpoint, exported (large weights stored as
    float16); returns (bundle, card, checkpoint) with the bundle's weights rounded as the files
    hold them."""
    torch.manual_seed(0)
    bundle = build_models("tiny").eval_mode()
    root = tmp_path_factory.mktemp("nn_export")
    checkpoint = save_checkpoint(
        root / "tiny.pt", bundle,
        latent_mean=[0.1 * i for i in range(8)], latent_std=[1.0 + 0.1 * i for i in range(8)],
        pose_stats=POSE_STATS, sampler={"steps": 8, "cfg_strength": 2.0}, camera={"fov_deg": 45.0},
        meta={"steps": 0, "note": "test"},
    )
    card = export_checkpoint(checkpoint, root / "model", version="1.2.3", metrics={"iou": 0.5})
    for module in bundle.modules().values():
        round_module_fp16_(module)
    return bundle, card, checkpoint


@pytest.fixture(scope="module")
def exported_float32(tmp_path_factory, exported):
    """The same checkpoint exported with float32 weights."""
    _, _, checkpoint = exported
    root = tmp_path_factory.mktemp("nn_export_fp32")
    return export_checkpoint(checkpoint, root / "model", weights="float32")


def _run_both(bundle, card, stage, inputs):
    with torch.no_grad():
        expected = stage_graphs(bundle)[stage](*inputs.values())
    expected = (expected,) if isinstance(expected, torch.Tensor) else expected
    session = _session(card.file(stage))
    got = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    return [e.numpy() for e in expected], got


@pytest.mark.parametrize("stage", STAGES)
def test_onnx_runtime_matches_torch(exported, stage):
    bundle, card, _ = exported
    for batch, seed in ((1, 11), (3, 12)):
        inputs = example_inputs(card.io(stage), batch, torch.Generator().manual_seed(seed))
        expected, got = _run_both(bundle, card, stage, inputs)
        assert [g.shape for g in got] == [e.shape for e in expected]
        for name_spec, e, g in zip(card.io(stage)["outputs"], expected, got):
            error = float(np.abs(e - g).max())
            assert error <= TOLERANCE, f"{stage} {name_spec['name']} batch {batch}: max abs error {error}"


@pytest.mark.parametrize("stage", STAGES)
def test_float32_weights_reproduce_the_unrounded_checkpoint(exported, exported_float32, stage):
    """--weights float32 exports the checkpoint's weights as they are."""
    from sam3d_addon.nn.checkpoint import load_checkpoint

    _, _, checkpoint = exported
    bundle, _ = load_checkpoint(checkpoint)
    bundle.eval_mode()
    card = exported_float32
    inputs = example_inputs(card.io(stage), 2, torch.Generator().manual_seed(21))
    expected, got = _run_both(bundle, card, stage, inputs)
    for e, g in zip(expected, got):
        assert float(np.abs(e - g).max()) <= TOLERANCE


def test_float16_storage_halves_the_files(exported, exported_float32):
    _, card16, _ = exported
    assert card16.data["weights"]["storage"] == "float16"
    assert exported_float32.data["weights"] == {"storage": "float32"}
    for stage in STAGES:
        half, full = card16.file(stage).stat().st_size, exported_float32.file(stage).stat().st_size
        assert half < 0.6 * full, f"{stage}: {half} vs {full} bytes"


def test_missing_pointmap_gives_finite_condition(exported):
    bundle, card, _ = exported
    inputs = example_inputs(card.io("condition_encoder"), 2, torch.Generator().manual_seed(5))
    inputs["pointmap"][:] = float("nan")  # "no point map"
    inputs["rgb_pointmap"][:, :, :20] = float("nan")  # partly missing points
    expected, got = _run_both(bundle, card, "condition_encoder", inputs)
    assert np.isfinite(got[0]).all()
    assert float(np.abs(expected[0] - got[0]).max()) <= TOLERANCE


def test_card_is_valid_and_complete(exported):
    _, card, _ = exported
    loaded = load_card(card.path)
    data = loaded.data
    assert data["version"] == "1.2.3" and data["metrics"] == {"iou": 0.5}
    assert data["training"] == {"steps": 0, "note": "test"}
    assert data["architecture"]["config"] == "tiny"
    assert loaded.input_size == 84 and loaded.shape_tokens == 64 and loaded.shape_channels == 8
    assert loaded.occupancy_resolution == 32 and loaded.occupancy_threshold == 0.0
    assert loaded.latent_std[1] == pytest.approx(1.1)
    assert loaded.pose == POSE_STATS
    assert loaded.sampler["steps"] == 8 and loaded.sampler["cfg_interval"] == [0.0, 500.0]
    assert loaded.camera_fov_deg == 45.0
    assert [e["name"] for e in data["io"]["condition_encoder"]["inputs"]] == list(CONDITION_INPUTS)
    assert [e["name"] for e in data["io"]["velocity"]["inputs"]] == list(MODALITIES) + ["t", "d", "cond"]
    assert data["io"]["velocity"]["inputs"][-1]["shape"] == ["B", 156, 128]
    assert data["io"]["structure_decoder"]["outputs"][0]["shape"] == ["B", 1, 32, 32, 32]
    for stage in STAGES:
        digest = hashlib.sha256(loaded.file(stage).read_bytes()).hexdigest()
        assert data["sha256"][stage] == digest
        session = _session(loaded.file(stage))
        assert [i.name for i in session.get_inputs()] == [e["name"] for e in data["io"][stage]["inputs"]]
        assert all(i.shape[0] == "B" for i in session.get_inputs())

    def reject(constant):
        raise AssertionError(f"model.json holds {constant}")

    json.loads((card.path / "model.json").read_text(), parse_constant=reject)


def test_bench_speed_reports_both_runtimes(exported):
    _, card, _ = exported
    report = bench_speed(card.path, repeats=1, threads=1)
    for stage in ("velocity", "condition_encoder"):
        assert report[stage]["torch_s"] > 0 and report[stage]["ort_s"] > 0
    assert report["ratio"] > 0 and report["torch_weights"].startswith("fresh")


@pytest.fixture(scope="module")
def exported_trained_like(tmp_path_factory, one_thread):
    """A tiny model whose weights all differ, as after training (the exporter stores equal tensors,
    e.g. a fresh model's all-ones norms, once, and then no name says which parameter is which)."""
    from sam3d_addon.nn.export import export_onnx

    torch.manual_seed(1)
    bundle = build_models("tiny").eval_mode()
    with torch.no_grad():
        for module in bundle.modules().values():
            for param in module.parameters():
                param.add_(0.01 * torch.randn_like(param))
    card = export_onnx(bundle, tmp_path_factory.mktemp("nn_recover") / "model",
                       {"camera": {"fov_deg": 50.0}, "pose": POSE_STATS})
    return bundle, card  # export_onnx rounded the bundle's weights as the files hold them


def test_the_graphs_give_back_every_weight_the_forward_pass_reads(exported_trained_like):
    """`sam3d train --init models/NAME` rebuilds the torch modules from the shipped graphs (the
    encoder from its training-only graph): every weight comes back exactly as the files hold it."""
    from sam3d_addon.nn.recover import UNUSED, recover_modules

    bundle, card = exported_trained_like
    entry = card.data["training_files"]["structure_encoder"]
    assert hashlib.sha256((card.path / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    torch.manual_seed(123)
    fresh = build_models("tiny")
    report = recover_modules(card.path, fresh)
    assert report["encoder"] and set(report["max_abs_diff"]) == set(STAGES) | {"structure_encoder"}
    compared = 0
    for name, module in bundle.modules().items():
        rebuilt = getattr(fresh, name).state_dict()
        for key, value in module.state_dict().items():
            if UNUSED.search(key):  # never read by forward(), so no graph holds it
                continue
            assert torch.equal(rebuilt[key], value), f"{name}.{key}"
            compared += 1
    assert compared > 400
    # idx_emb is only partly read: the crop and full-image rows
    idx = bundle.condition_encoder.idx_emb
    assert torch.equal(fresh.condition_encoder.idx_emb[:2], idx[:2])


def test_rebuild_without_encoder_graph_and_a_wrong_match_is_refused(exported_trained_like, tmp_path, monkeypatch):
    import shutil

    from sam3d_addon.errors import ModelError
    from sam3d_addon.nn import recover

    _, card = exported_trained_like
    folder = tmp_path / "old"
    shutil.copytree(card.path, folder)
    (folder / "structure_encoder.onnx").unlink()  # as older exports are
    assert recover.recover_modules(folder, build_models("tiny"))["encoder"] is False
    with pytest.raises(ModelError, match="has no structure_encoder.onnx"):
        recover.recover_modules(folder, build_models("tiny"), encoder_required=True)
    # the ONNX-vs-torch check catches a wrong match: here every folded weight goes to the first
    # parameter of its shape
    monkeypatch.setattr(recover, "_score", lambda key, scope: 0)
    with pytest.raises(ModelError, match="do not reproduce the graph"):
        recover.recover_modules(folder, build_models("tiny"))


def test_export_writes_noise_scale_and_refuses_a_bad_one(exported, tmp_path, capsys):
    """`sam3d export --noise-scale shape=0.5` puts it in the card's sampler block; a latent the
    model does not have, or a malformed value, is one line and writes nothing."""
    from sam3d_addon import cli

    _, _, checkpoint = exported
    for bad, message in (("colour=0.5", "names 'colour'"), ("shape", "wants LATENT=FACTOR"),
                         ("shape=-1", r"in \(0, 10\]")):
        out = tmp_path / bad.replace("=", "_")
        assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--noise-scale", bad]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert err.count("\n") == 1 and not out.exists()
    out = tmp_path / "cold"
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--noise-scale", "shape=0.5"]) == 0
    card = load_card(out)
    assert card.sampler["noise_scale"] == {"shape": 0.5}
    assert card.sampler["steps"] == 8  # the checkpoint's own sampler block is kept around it
