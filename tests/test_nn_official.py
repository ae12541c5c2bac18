"""The `official` preset reproduces the official state dicts; `tiny` keeps the official numerics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sam3d_addon.nn.bundle import build_models  # noqa: E402
from sam3d_addon.nn.flow import grid_position_embedding, timestep_features  # noqa: E402
from sam3d_addon.nn.vae import Upsample3d  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official-state-dicts"
GENERATOR_PREFIX = "_base_models.generator.reverse_fn.backbone."
EMBEDDER_PREFIX = "_base_models.condition_embedder."


def _reference(name: str) -> dict:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"official state-dict listing {path} is absent (it lives in ../shared/reference)")
    return json.loads(path.read_text())


def _entries(rows, prefix: str = "") -> dict[str, tuple]:
    return {row[0][len(prefix):]: tuple(row[1]) for row in rows if row[0].startswith(prefix)}


def _state_shapes(module) -> dict[str, tuple]:
    # state_dict() holds parameters and persistent buffers only, like a checkpoint.
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def _nonpersistent_shapes(module) -> dict[str, tuple]:
    saved = set(module.state_dict())
    return {name: tuple(buf.shape) for name, buf in module.named_buffers() if name not in saved}


@pytest.fixture(scope="module")
def official():
    # Names and shapes only: the official blocks are fp16 (use_fp16), ours fp32; load_state_dict casts.
    return build_models("official", device="meta")


def _assert_same(have: dict, want: dict):
    assert sorted(set(want) - set(have)) == [], "missing entries"
    assert sorted(set(have) - set(want)) == [], "unexpected entries"
    assert {k: v for k, v in have.items() if want[k] != v} == {}, "shape mismatches"


def test_flow_network_matches_official_ss_generator(official):
    reference = _reference("ss_generator.json")
    want = _entries(reference["rows"], GENERATOR_PREFIX)
    assert len(want) == 945
    _assert_same(_state_shapes(official.generator), want)


def test_condition_embedder_matches_official(official):
    reference = _reference("ss_generator.json")
    want = _entries(reference["rows"], EMBEDDER_PREFIX)
    assert len(want) == 722
    _assert_same(_state_shapes(official.condition_encoder), want)
    # ImageNet mean/std: buffers that the official checkpoint does not store.
    want_nonpersistent = _entries(reference["nonpersistent"], EMBEDDER_PREFIX)
    _assert_same(_nonpersistent_shapes(official.condition_encoder), want_nonpersistent)


def test_structure_decoder_matches_official_ss_decoder(official):
    reference = _reference("ss_decoder.json")
    _assert_same(_state_shapes(official.decoder), _entries(reference["rows"]))


def test_official_token_counts(official):
    assert official.config.condition.num_tokens == 7528
    assert official.config.condition.projection_hidden == 2816
    assert official.config.flow.shape_tokens == 4096
    assert official.config.vae.resolution == 64


# -- numerics (tiny) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_thread():
    # Two cores shared with other jobs: oversubscribed OpenMP threads make torch many times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny(one_thread):
    torch.manual_seed(0)
    return build_models("tiny").eval_mode()


def test_tiny_sizes(tiny):
    assert tiny.config.condition.num_tokens == 4 * 37 + 2 * 4 == 156
    assert tiny.config.flow.shape_tokens == 64
    assert tiny.config.vae.resolution == 32


def test_shape_position_embedding_is_the_closed_form(tiny):
    channels, resolution = tiny.config.flow.model_channels, tiny.config.flow.shape_resolution
    freq_dim = channels // 3 // 2
    omega = 10000.0 ** (-np.arange(freq_dim) / freq_dim)
    expected = np.zeros((resolution ** 3, channels))
    for n in range(resolution ** 3):
        coords = (n // resolution ** 2, (n // resolution) % resolution, n % resolution)  # z fastest
        row = np.concatenate([f(a * omega) for a in coords for f in (np.sin, np.cos)])
        expected[n, :row.size] = row
    buffer = tiny.generator.latent_mapping["shape"].pos_emb
    assert "latent_mapping.shape.pos_emb" in tiny.generator.state_dict()  # persistent, as official
    np.testing.assert_allclose(buffer.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(grid_position_embedding(16, 1024)[:, 1020:].numpy(), 0.0)


def test_timestep_features_are_cos_first():
    tau = torch.tensor([0.0, 250.0, 1000.0])
    freqs = np.exp(-math.log(10000.0) * np.arange(128) / 128)
    args = tau.numpy()[:, None].astype(np.float64) * freqs
    expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    np.testing.assert_allclose(timestep_features(tau, 256).numpy(), expected, atol=2e-4)


def _flow_inputs(config, batch, seed):
    g = torch.Generator().manual_seed(seed)
    latents = {
        "shape": torch.randn(batch, config.flow.shape_tokens, 8, generator=g),
        "rotation6d": torch.randn(batch, 1, 6, generator=g),
        "translation": torch.randn(batch, 1, 3, generator=g),
        "scale": torch.randn(batch, 1, 3, generator=g),
        "translation_scale": torch.randn(batch, 1, 1, generator=g),
    }
    cond = torch.randn(batch, config.condition.num_tokens, config.condition.cond_channels, generator=g)
    return latents, cond


def test_shape_stream_ignores_pose_but_pose_sees_shape(tiny):
    latents, cond = _flow_inputs(tiny.config, 2, seed=1)
    other_pose, _ = _flow_inputs(tiny.config, 2, seed=2)
    t, d = torch.tensor([100.0, 700.0]), torch.zeros(2)
    with torch.no_grad():
        base = tiny.generator(latents, t, cond, d)
        new_pose = tiny.generator({**other_pose, "shape": latents["shape"]}, t, cond, d)
        new_shape = tiny.generator({**latents, "shape": other_pose["shape"]}, t, cond, d)
    torch.testing.assert_close(new_pose["shape"], base["shape"], rtol=0, atol=1e-6)
    assert (new_pose["rotation6d"] - base["rotation6d"]).abs().max() > 1e-3
    assert (new_shape["translation"] - base["translation"]).abs().max() > 1e-3  # pose attends to shape


def test_unconditional_branch_is_zero_condition(tiny):
    latents, cond = _flow_inputs(tiny.config, 1, seed=3)
    t, d = torch.tensor([300.0]), torch.tensor([0.0])
    with torch.no_grad():
        uncond = tiny.generator(latents, t, cond, d, unconditional=True)
        zeros = tiny.generator(latents, t, torch.zeros_like(cond), d)
        with_d = tiny.generator(latents, t, cond, d)
        without_d = tiny.generator(latents, t, cond)
    torch.testing.assert_close(uncond["shape"], zeros["shape"], rtol=0, atol=0)
    # As official: d_embedder(0) is added whenever d is passed.
    assert (with_d["shape"] - without_d["shape"]).abs().max() > 1e-4


def test_upsample_pixel_shuffle_channel_order():
    up = Upsample3d(1, 2)
    up.conv = torch.nn.Identity()  # isolate the shuffle
    conv_out = torch.randn(1, 16, 2, 3, 4)
    out = up(conv_out)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    torch.testing.assert_close(out[0, c, i::2, j::2, k::2], conv_out[0, c * 8 + 4 * i + 2 * j + k])


def test_layout_read_is_tiny_only_and_sees_token_order(tiny):
    """Cross-attention cannot tell the condition tokens' order; the tiny preset's layout read
    (not in the official model) maps each token position to its own place in the shape tokens."""
    assert build_models("official", device="meta").generator.condition_layout is None
    assert tiny.generator.condition_layout is not None
    latents, cond = _flow_inputs(tiny.config, 1, seed=4)
    shuffled = cond[:, torch.randperm(cond.shape[1], generator=torch.Generator().manual_seed(0))]
    t, d = torch.tensor([500.0]), torch.tensor([0.0])
    layout = tiny.generator.condition_layout
    with torch.no_grad():
        changed = (tiny.generator(latents, t, cond, d)["shape"] - tiny.generator(latents, t, shuffled, d)["shape"])
        tiny.generator.condition_layout = None
        try:
            same = (tiny.generator(latents, t, cond, d)["shape"] - tiny.generator(latents, t, shuffled, d)["shape"])
        finally:
            tiny.generator.condition_layout = layout
    assert same.abs().max() < 1e-5
    assert changed.abs().max() > 1e-3
