"""Training recipe pieces: the consistency target, the flow loss and the latent token order."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sam3d_addon.nn.bundle import build_models  # noqa: E402
from sam3d_addon.train.loop import flow_loss, shortcut_target, zero_init_modulation  # noqa: E402


class ConstantVelocity(torch.nn.Module):
    """A stand-in network: velocity = scale * (1 + mean of cond), records its d inputs."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.d_seen = []

    def forward(self, x, t, cond, d=None):
        self.d_seen.append(d.clone())
        c = 1.0 + cond.mean(dim=(1, 2)).view(-1, 1, 1)
        return {m: torch.ones_like(v) * self.scale * c for m, v in x.items()}


def test_shortcut_target_is_mean_of_two_guided_steps():
    x = {"shape": torch.zeros(2, 3, 4)}
    cond = torch.ones(2, 5, 6)  # mean 1 -> conditional velocity 2*scale, unconditional 1*scale
    teacher, student = ConstantVelocity(1.0), ConstantVelocity(3.0)
    w = 2.0
    t, d = torch.tensor([0.0, 0.5]), torch.tensor([0.25, 0.25])
    target = shortcut_target(student, teacher, x, t, d, cond, w, smallest=True)
    # (1 + w) * 2 - w * 1 = 4 for the teacher (constant field: both steps agree).
    assert torch.allclose(target["shape"], torch.full((2, 3, 4), 4.0))
    assert all(torch.all(dd == 0) for dd in teacher.d_seen) and not student.d_seen  # d = 0 at the smallest level
    target = shortcut_target(student, teacher, x, t, d, cond, w, smallest=False)
    assert torch.allclose(target["shape"], torch.full((2, 3, 4), 12.0))
    assert all(torch.allclose(dd, torch.full_like(dd, 250.0)) for dd in student.d_seen)


def test_flow_loss_weights_and_zero_init():
    torch.manual_seed(0)
    bundle = build_models("tiny")
    zero_init_modulation(bundle)
    cond = torch.randn(2, bundle.config.condition.num_tokens, bundle.config.flow.cond_channels)
    x1 = {"shape": torch.randn(2, 64, 8), "rotation6d": torch.randn(2, 1, 6), "translation": torch.randn(2, 1, 3),
          "scale": torch.randn(2, 1, 3), "translation_scale": torch.zeros(2, 1, 1)}
    weights = {"shape": 1.0, "rotation6d": 0.1, "translation": 1.0, "scale": 0.1, "translation_scale": 0.1}
    g = torch.Generator().manual_seed(1)
    loss, parts = flow_loss(bundle, cond, x1, weights, g)
    assert loss.requires_grad
    assert float(loss.detach()) == pytest.approx(sum(weights[m] * parts[m] for m in parts), rel=1e-5)
    loss.backward()
    assert bundle.generator.blocks[0].adaLN_modulation[1].weight.grad.abs().sum() > 0


def test_training_token_order_matches_exported_decoder(tmp_path):
    """The trainer turns latent grids into tokens with grid_to_tokens; the exported decoder graph
    must turn those tokens back into the same grid (the contract's token order)."""
    ort = pytest.importorskip("onnxruntime")
    from sam3d_addon.nn.export import export_random
    from sam3d_addon.nn.vae import grid_to_tokens

    card = export_random("tiny", tmp_path / "m", seed=3, weights="float32")  # the torch weights as they are
    torch.manual_seed(3)
    bundle = build_models("tiny").eval_mode()  # the same weights export_random built
    grid = torch.randn(2, 8, 4, 4, 4)
    sess = ort.InferenceSession(str(card.file("structure_decoder")), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(None, {"shape": grid_to_tokens(grid).numpy()})[0]
    with torch.no_grad():
        torch_logits = bundle.decoder(grid).numpy()
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4


@pytest.mark.parametrize("head", ["flatten", "attention"])
def test_shape_ceiling_cnn_learns_a_latent_and_iou_counts_voxels(head):
    """The diagnostic's CNN (either head) maps a crop and mask to the shape latent's tokens and can
    fit them; voxel_iou is 1 for identical grids and 0 for disjoint ones."""
    from sam3d_addon.train.shape_ceiling import CropCNN, voxel_iou

    torch.manual_seed(0)
    cnn = CropCNN(tokens=64, channels=8, width=8, head=head, cond_channels=32)
    image, mask = torch.rand(4, 3, 84, 84), (torch.rand(4, 1, 84, 84) > 0.5).float()
    target = torch.randn(4, 64, 8)
    assert cnn(image, mask).shape == (4, 64, 8)
    opt = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    first = None
    for _ in range(30 if head == "flatten" else 150):  # learned queries start alike and separate slowly
        loss = torch.nn.functional.mse_loss(cnn(image, mask), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first

    a = np.zeros((2, 4, 4, 4), bool)
    a[:, :2] = True
    assert voxel_iou(a, a) == 1.0
    assert voxel_iou(a, ~a) == 0.0


def test_shape_ceiling_encoder_regressor_trains_the_condition_encoder():
    """`--encoder vit`: the tiny model's own condition encoder under the flatten head gives the
    latent's tokens, and the loss reaches the encoder's weights (it is trained, not frozen)."""
    from types import SimpleNamespace

    from sam3d_addon.nn.bundle import build_models
    from sam3d_addon.train.data import IMAGE_KEYS
    from sam3d_addon.train.shape_ceiling import EncoderRegressor, _condition

    torch.manual_seed(0)
    bundle = build_models("tiny")
    size = bundle.config.condition.vit.input_size
    rng = np.random.default_rng(0)
    arrays = SimpleNamespace(images={k: rng.integers(0, 256, (2, 1 if "mask" in k else 3, size, size), dtype=np.uint8)
                                     for k in IMAGE_KEYS})
    inputs = _condition(arrays, np.arange(2))
    n_tokens = bundle.condition_encoder(**inputs).shape[1]
    model = EncoderRegressor(bundle.condition_encoder, n_tokens, bundle.config.condition.cond_channels, 64, 8)
    out = model(inputs)
    assert out.shape == (2, 64, 8)
    out.pow(2).mean().backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_layout_probe_trains_the_flows_own_layout_read():
    """The encoder stage's probe reads the flow's condition_layout itself (shared, not copied),
    so pre-training the encoder also pre-trains the flow's read of it."""
    from sam3d_addon.train.loop import LayoutProbe

    torch.manual_seed(0)
    bundle = build_models("tiny")
    layout = bundle.generator.condition_layout
    probe = LayoutProbe(layout, 8, 12)
    cond = torch.randn(2, bundle.config.condition.num_tokens, bundle.config.flow.cond_channels)
    shape, pose = probe(cond)
    assert shape.shape == (2, 64, 8) and pose.shape == (2, 12)
    before = layout.reduce.weight.detach().clone()
    opt = torch.optim.SGD(probe.parameters(), lr=0.1)
    (shape.square().mean() + pose.square().mean()).backward()
    opt.step()
    assert (bundle.generator.condition_layout.reduce.weight - before).abs().max() > 0
