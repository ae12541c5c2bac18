"""The sparse texture-stage networks: index maps, gather conv vs dense conv3d, the (n+1)
downsample rule, official parameter layouts, and torch / ONNX Runtime parity with dynamic N."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
import torch.nn.functional as F  # noqa: E402

from sam3d_addon.nn.slat import build_slat_flow, coords_position_embedding  # noqa: E402
from sam3d_addon.nn.slat_decoders import build_slat_decoders, hammersley_offsets, window_mask  # noqa: E402
from sam3d_addon.nn.slat_export import (  # noqa: E402
    DecoderGraph, SLatFlowGraph, example_voxels, export_gaussian_decoder, export_mesh_decoder, export_slat_flow,
    gaussian_decoder_example, mesh_decoder_example, slat_flow_example,
)
from sam3d_addon.nn.sparse import (  # noqa: E402
    KERNEL_OFFSETS, SparseConv3d, downsample_index, neighbour_index, sparse_downsample, sparse_upsample,
    subdivide_coords,
)

TOLERANCE = 1e-4
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official-state-dicts"
GENERATOR_PREFIX = "_base_models.generator.reverse_fn.backbone."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def random_voxels(rng, resolution, fill):
    return np.argwhere(rng.random((resolution,) * 3) < fill).astype(np.int64)


# -- index maps (NumPy, outside the graph) -------------------------------------------------------

def test_neighbour_index_matches_a_dictionary():
    rng = np.random.default_rng(0)
    coords = random_voxels(rng, 9, 0.3) - 4  # negative coordinates too
    coords = coords[rng.permutation(len(coords))]
    index = neighbour_index(coords)
    rows = {tuple(c): i for i, c in enumerate(coords)}
    want = np.array([[rows.get(tuple(c + o), -1) for o in KERNEL_OFFSETS] for c in coords])
    assert index.dtype == np.int64 and index.shape == (len(coords), 27)
    np.testing.assert_array_equal(index, want)
    assert (index[:, 13] == np.arange(len(coords))).all()  # the centre tap is the voxel itself
    with pytest.raises(ValueError, match="duplicate"):
        neighbour_index(np.concatenate([coords, coords[:1]]))


def test_downsample_index_is_official():
    rng = np.random.default_rng(1)
    coords = random_voxels(rng, 12, 0.2)
    coords = coords[rng.permutation(len(coords))]
    coarse, parent, children = downsample_index(coords)
    unique = sorted({tuple(c) for c in coords // 2})  # lexicographic (x, y, z)
    np.testing.assert_array_equal(coarse, np.array(unique))
    np.testing.assert_array_equal(coarse[parent], coords // 2)
    assert (children >= 0).sum() == len(coords)
    for row, kids in enumerate(children):
        for slot, kid in enumerate(kids):
            if kid >= 0:
                assert tuple(coords[kid] - 2 * coarse[row]) == tuple(((slot >> 2) & 1, (slot >> 1) & 1, slot & 1))
    fine, parents = subdivide_coords(coarse[:2])
    np.testing.assert_array_equal(fine[:8] - 2 * coarse[0], [[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    np.testing.assert_array_equal(parents, [0] * 8 + [1] * 8)


# -- graph ops ---------------------------------------------------------------------------------------

def test_gather_conv_equals_dense_conv3d():
    rng = np.random.default_rng(2)
    resolution = 10
    coords = random_voxels(rng, resolution, 0.25)
    torch.manual_seed(0)
    conv = SparseConv3d(5, 7, 3)
    with torch.no_grad():
        conv.conv.bias.normal_()
    feats = torch.randn(len(coords), 5)
    with torch.no_grad():
        got = conv(feats, torch.as_tensor(neighbour_index(coords)))
    dense = torch.zeros(1, 5, resolution, resolution, resolution)
    x, y, z = (torch.as_tensor(coords[:, i]) for i in range(3))
    dense[0, :, x, y, z] = feats.t()
    weight = conv.conv.weight.permute(0, 4, 1, 2, 3)  # KRSC [out, kx, ky, kz, in] -> [out, in, kx, ky, kz]
    with torch.no_grad():
        want = F.conv3d(dense, weight, conv.conv.bias, padding=1)[0, :, x, y, z].t()
    assert float((got - want).abs().max()) < 1e-5
    one_by_one = SparseConv3d(5, 7, 1)
    want_linear = feats @ one_by_one.conv.weight.reshape(7, 5).t() + one_by_one.conv.bias
    assert torch.allclose(one_by_one(feats), want_linear, atol=1e-6)


def test_downsample_is_sum_over_n_plus_one_and_upsample_copies():
    rng = np.random.default_rng(3)
    coords = random_voxels(rng, 8, 0.3)
    coarse, parent, children = downsample_index(coords)
    feats = torch.randn(len(coords), 4)
    got = sparse_downsample(feats, torch.as_tensor(children))
    # The official op: scatter_reduce "mean" into zeros with include_self=True.
    official = torch.zeros(len(coarse), 4).scatter_reduce(
        0, torch.as_tensor(parent)[:, None].expand(-1, 4), feats, reduce="mean", include_self=True)
    assert torch.allclose(got, official, atol=1e-6)
    count = np.bincount(parent, minlength=len(coarse))
    plain_sum = torch.zeros(len(coarse), 4).index_add(0, torch.as_tensor(parent), feats)
    assert torch.allclose(got, plain_sum / torch.as_tensor(count + 1.0)[:, None].float(), atol=1e-6)
    up = sparse_upsample(got, torch.as_tensor(parent))
    assert torch.equal(up, got[torch.as_tensor(parent)])


def test_position_embedding_layout():
    coords = torch.tensor([[1, 2, 3]])
    emb = coords_position_embedding(coords, 64)  # F = 10 per sin/cos block, 4 zero channels
    freqs = 1.0 / 10000.0 ** (torch.arange(10) / 10)
    assert torch.allclose(emb[0, :10], torch.sin(1 * freqs)) and torch.allclose(emb[0, 10:20], torch.cos(1 * freqs))
    assert torch.allclose(emb[0, 40:50], torch.sin(3 * freqs)) and (emb[0, 60:] == 0).all()


# -- official layouts --------------------------------------------------------------------------------

def _reference(name):
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"official state-dict listing {path} is absent (it lives in ../shared/reference)")
    return json.loads(path.read_text())


def _assert_same(module, want):
    have = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    assert sorted(set(want) - set(have)) == [], "missing entries"
    assert sorted(set(have) - set(want)) == [], "unexpected entries"
    assert {k: v for k, v in have.items() if want[k] != v} == {}, "shape mismatches"


def test_official_flow_matches_slat_generator():
    rows = _reference("slat_generator.json")["rows"]
    want = {r[0][len(GENERATOR_PREFIX):]: tuple(r[1]) for r in rows if r[0].startswith(GENERATOR_PREFIX)}
    assert len(want) == 526
    _assert_same(build_slat_flow("official", device="meta"), want)


@pytest.mark.parametrize("preset,files", [("official", ("slat_decoder_gs.json", "slat_decoder_mesh.json")),
                                          ("official_gs_4", ("slat_decoder_gs_4.json", None))])
def test_official_decoders_match(preset, files):
    for module, name in zip(build_slat_decoders(preset, device="meta"), files):
        if name is not None:
            _assert_same(module, {r[0]: tuple(r[1]) for r in _reference(name)["rows"]})


def test_offset_perturbation_rows():
    # First rows for G = 32, voxel_size 1.5 (fact sheet section 6.2).
    np.testing.assert_allclose(hammersley_offsets(32, 1.5)[:3], [[-0.80472, -0.80472, -0.80472],
                                                                [-0.73317, 0.0, -0.22599],
                                                                [-0.66750, -0.34657, 0.22599]], atol=1e-5)


# -- tiny: trainable, exportable ---------------------------------------------------------------------

def test_tiny_flow_backpropagates_to_every_parameter():
    torch.manual_seed(0)
    model = build_slat_flow("tiny")
    inputs = slat_flow_example(model, example_voxels(16, fill=0.0))
    SLatFlowGraph(model)(*inputs.values()).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # Zero-initialised nothing: every parameter must get a gradient.
    assert missing == []


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _assert_parity(module, inputs, session, label):
    with torch.no_grad():
        expected = module(*inputs.values())
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    got = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    assert [g.shape for g in got] == [tuple(e.shape) for e in expected], label
    error = max(float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got))
    assert error <= TOLERANCE, f"{label}: max abs error {error}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("texture_sparse")
    flow = build_slat_flow("tiny").eval()
    gaussian, mesh = (m.eval() for m in build_slat_decoders("tiny"))
    io = export_slat_flow(flow, root / "slat_flow.onnx")
    export_gaussian_decoder(gaussian, root / "gaussians.onnx")
    export_mesh_decoder(mesh, root / "mesh.onnx")
    return root, flow, gaussian, mesh, io


def test_flow_onnx_parity_dynamic_voxel_count(exported):
    root, flow, _, _, io = exported
    session = _session(root / "slat_flow.onnx")
    assert [i.name for i in session.get_inputs()] == [e["name"] for e in io["inputs"]]
    rng = np.random.default_rng(4)
    cases = {
        "one voxel": np.array([[5, 9, 30]]),
        "hundreds": example_voxels(32, seed=5, fill=0.0)[::6],
        "thousands": random_voxels(rng, 32, 0.12),
    }
    assert len(cases["hundreds"]) >= 200 and len(cases["thousands"]) >= 3000
    for seed, (label, coords) in enumerate(cases.items()):
        inputs = slat_flow_example(flow, coords, cond_tokens=3 + seed, seed=seed)
        _assert_parity(SLatFlowGraph(flow), inputs, session, f"flow, {label} ({len(coords)} voxels)")


def test_decoders_onnx_parity(exported):
    root, _, gaussian, mesh, _ = exported
    rng = np.random.default_rng(6)
    for module, name, example in ((gaussian, "gaussians.onnx", gaussian_decoder_example),
                                  (mesh, "mesh.onnx", mesh_decoder_example)):
        session = _session(root / name)
        for coords in (np.array([[0, 31, 7]]), random_voxels(rng, 32, 0.01), random_voxels(rng, 32, 0.12)):
            _assert_parity(DecoderGraph(module), example(module, coords, seed=1), session,
                           f"{name}, {len(coords)} voxels")


def test_gathered_windows_equal_window_masked_attention():
    """The decoders' windowed attention (tokens gathered per window, W M^2) gives exactly the
    [N, N] window-masked full attention it replaces, for both shifts."""
    torch.manual_seed(0)
    rng = np.random.default_rng(8)
    decoder = build_slat_decoders("tiny")[0].eval()
    coords = random_voxels(rng, 32, 0.05)
    x = torch.randn(len(coords), decoder.config.model_channels)
    coords_t = torch.as_tensor(coords)
    windows = decoder.window_inputs(coords)
    gather, slot = windows[0]
    assert gather.shape[0] > 1 and sorted(gather[gather < len(coords)].tolist()) == list(range(len(coords)))
    for block in decoder.blocks:
        mask = window_mask(coords_t, decoder.config.window_size, block.shift)
        h = torch.nn.functional.layer_norm(x, (x.shape[1],), eps=1e-6)
        dense = x + block.attn(h, mask)
        dense = dense + block.mlp(torch.nn.functional.layer_norm(dense, (x.shape[1],), eps=1e-6))
        with torch.no_grad():
            got = block(x, windows[decoder.shifts.index(block.shift)])
        assert float((got - dense.detach()).abs().max()) < 1e-5


def test_gaussian_decoder_writes_a_ply(tmp_path):
    torch.manual_seed(0)
    gaussian = build_slat_decoders("tiny")[0].eval()
    coords = example_voxels(32, fill=0.0)[:200]
    with torch.no_grad():
        xyz, scales, rotations, opacities, colors = DecoderGraph(gaussian)(*gaussian_decoder_example(gaussian, coords).values())
    centres = (torch.as_tensor(coords, dtype=torch.float32) + 0.5) / 32 - 0.5
    assert float((xyz - centres[:, None]).abs().max()) <= 0.5 * 1.5 / 32 + 1e-6  # within 1.5 voxels
    assert (scales > 0).all() and torch.allclose(rotations.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert ((opacities > 0) & (opacities < 1)).all() and colors.shape == (200, 4, 3)
    from sam3d_addon.texture.gaussians import read_ply, write_ply

    outputs = [o.numpy() for o in (xyz, scales, rotations, opacities, colors)]
    back = read_ply(write_ply(tmp_path / "tiny.ply", *outputs))
    assert back["xyz"].shape == (800, 3)
    np.testing.assert_allclose(back["xyz"], outputs[0].reshape(-1, 3), atol=1e-6)
    np.testing.assert_allclose(back["opacities"], outputs[3].reshape(-1), atol=1e-5)
