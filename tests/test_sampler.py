import numpy as np
import pytest

from sam3d_addon.errors import Cancelled
from sam3d_addon.sampler import FlowSampler, initial_noise, rescale_time


def recorder(calls, fn=None):
    def velocity(x, t, d, cond):
        calls.append((tuple(np.round(t, 3)), tuple(np.round(d, 3)), cond.shape[0], bool(np.all(cond[len(t) // 2:] == 0)) if len(t) > 1 else False))
        return fn(x, t, d, cond) if fn else {k: np.ones_like(v) for k, v in x.items()}
    return velocity


def test_rescale_time_matches_official_formula():
    t = np.linspace(0, 1, 5)
    assert np.allclose(rescale_time(t, 3.0), t / (3 - 2 * t))
    assert np.allclose(rescale_time(t, 1.0), t)


def test_guided_calls_match_logged_official_schedule():
    # Fact sheet section 8: S=4, r=3, w=7 -> network called at tau 0, 100, 250, 500, each cond + uncond.
    calls = []
    s = FlowSampler(steps=4, rescale_t=3.0, cfg_strength=7.0)
    x0 = {"shape": np.zeros((1, 2, 3), np.float32)}
    s.sample(recorder(calls), x0, np.ones((1, 5, 4), np.float32))
    assert [c[0] for c in calls] == [(0.0, 0.0), (100.0, 100.0), (250.0, 250.0), (500.0, 500.0)]
    assert all(c[1] == (0.0, 0.0) and c[2] == 2 and c[3] for c in calls)
    assert s.network_calls() == 8


def test_shortcut_passes_step_size_and_no_guidance():
    calls = []
    s = FlowSampler(steps=4, rescale_t=3.0, cfg_strength=7.0, shortcut=True)
    s.sample(recorder(calls), {"shape": np.zeros((1, 1, 1), np.float32)}, np.ones((1, 3, 2), np.float32))
    assert [c[0][0] for c in calls] == [0.0, 100.0, 250.0, 500.0]
    assert all(c[1] == (250.0,) and c[2] == 1 for c in calls)


def test_guidance_interval_excludes_late_steps():
    s = FlowSampler(steps=25, rescale_t=3.0, cfg_strength=7.0)
    guided = [k for k, t in enumerate(s.timesteps()[:-1]) if s.guidance_at(t)]
    assert guided == list(range(19))  # k = 0..18 of 0..24, as the fact sheet logs


def test_euler_integrates_constant_and_linear_fields():
    s = FlowSampler(steps=7, rescale_t=3.0)
    x0 = {"a": np.zeros((2, 3), np.float32)}
    out = s.sample(lambda x, t, d, c: {"a": np.full_like(x["a"], 2.0)}, x0, np.ones((2, 1, 1), np.float32))
    assert np.allclose(out["a"], 2.0, atol=1e-6)
    # Rectified-flow velocity towards a target: x1 - x0 along a straight path is integrated exactly.
    target = np.array([[1.0, -2.0, 3.0]], np.float32)
    noise = np.array([[0.5, 0.5, 0.5]], np.float32)
    fn = lambda x, t, d, c: {"a": np.broadcast_to(target - noise, x["a"].shape).copy()}
    out = FlowSampler(steps=3).sample(fn, {"a": noise}, np.ones((1, 1, 1), np.float32))
    assert np.allclose(out["a"], target, atol=1e-6)


def test_cfg_combination_formula():
    # y = (1 + w) y_c - w y_u ; make y_c = 1, y_u = 0 (cond is zero for the uncond rows).
    fn = lambda x, t, d, c: {"a": np.broadcast_to(c.mean(axis=(1, 2)).reshape(-1, 1), x["a"].shape).copy()}
    s = FlowSampler(steps=1, cfg_strength=3.0)
    out = s.sample(fn, {"a": np.zeros((1, 1), np.float32)}, np.ones((1, 2, 2), np.float32))
    assert np.allclose(out["a"], 4.0)


def test_seeded_noise_reproducible_and_cancel():
    a = initial_noise({"x": (1, 4), "y": (2,)}, 7)
    b = initial_noise({"x": (1, 4), "y": (2,)}, 7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["x"], initial_noise({"x": (1, 4), "y": (2,)}, 8)["x"])
    with pytest.raises(Cancelled):
        FlowSampler(steps=3).sample(lambda *a: {}, {"a": np.zeros(1, np.float32)}, np.ones((1, 1, 1)), cancel=lambda: True)


def test_noise_scale_scales_only_the_named_latent_of_the_same_draw():
    shapes = {"shape": (1, 64, 8), "translation": (1, 1, 3)}
    plain = initial_noise(shapes, 3)
    cooled = initial_noise(shapes, 3, {"shape": 0.5})
    assert np.array_equal(cooled["translation"], plain["translation"])
    assert np.allclose(cooled["shape"], 0.5 * plain["shape"])
    assert np.std(cooled["shape"]) == pytest.approx(0.5 * np.std(plain["shape"]), rel=1e-5)
    with pytest.raises(ValueError, match="rotation"):
        initial_noise(shapes, 3, {"rotation": 0.5})


def test_sampler_from_card_settings_picks_the_shortcut_or_its_reference():
    """One reading of a card's sampler block: a shortcut model runs its few steps unguided, and
    the full-length guided setting it was distilled from when shortcut=False; arguments override."""
    card = {"steps": 4, "shortcut": True, "cfg_strength": 0.0, "cfg_interval": [0.0, 500.0], "rescale_t": 2.0,
            "time_scale": 1000.0, "reference_steps": 25, "reference_cfg_strength": 1.0}
    fast = FlowSampler.from_settings(card)
    assert (fast.steps, fast.shortcut, fast.cfg_strength, fast.rescale_t) == (4, True, 0.0, 2.0)
    full = FlowSampler.from_settings(card, shortcut=False)
    assert (full.steps, full.shortcut, full.cfg_strength, full.cfg_interval) == (25, False, 1.0, (0.0, 500.0))
    custom = FlowSampler.from_settings(card, steps=10, cfg_strength=3.0, shortcut=False)
    assert (custom.steps, custom.cfg_strength) == (10, 3.0)
    plain = FlowSampler.from_settings({"steps": 25, "cfg_strength": 0.5, "rescale_t": 8.0})  # a texture card
    assert (plain.steps, plain.shortcut, plain.cfg_strength, plain.rescale_t) == (25, False, 0.5, 8.0)


def test_card_noise_scale_is_checked_when_the_card_loads():
    """A bad `sampler.noise_scale` is refused with one line when the card is read, not mid-run."""
    import json

    from sam3d_addon import contract
    from sam3d_addon.errors import ModelError

    folder = contract.MODELS_DIR / "tiny"
    data = json.loads((folder / "model.json").read_text())
    for bad, message in (({"colour": 0.5}, "names 'colour'"), ({"shape": 0.0}, r"in \(0, 10\]"),
                         ({"shape": "low"}, r"in \(0, 10\]"), ([0.5], "must map")):
        data["sampler"]["noise_scale"] = bad
        with pytest.raises(ModelError, match=message) as err:
            contract.parse_card(folder, data)
        assert "\n" not in str(err.value)
    data["sampler"]["noise_scale"] = {"shape": 0.5}
    assert contract.parse_card(folder, data).sampler["noise_scale"] == {"shape": 0.5}
    for bad in (0, 17, 2.5, True, "4"):
        data["sampler"]["samples"] = bad
        with pytest.raises(ModelError, match="sampler.samples must be a whole number from 1 to 16"):
            contract.parse_card(folder, data)
    data["sampler"]["samples"] = 4
    assert contract.parse_card(folder, data).sampler["samples"] == 4


def _chair_inputs(pipe):
    """The example chair's model inputs for `pipe`."""
    from sam3d_addon import contract
    from sam3d_addon.preprocess import prepare_inputs, read_mask, read_photo

    examples = contract.MODELS_DIR.parent / "examples"
    rgb = read_photo(examples / "chair.png").rgb
    mask = read_mask(examples / "chair_mask.png", (rgb.shape[1], rgb.shape[0]))
    return prepare_inputs(rgb, mask, pipe.card.input_size, pipe.card.crop_box_factor)


def test_pipeline_reads_noise_scale_from_the_card(tmp_path):
    """The shape stream does not attend to the pose tokens, so with (almost) no shape noise the
    sampled shape no longer depends on the seed; with the card's plain noise it does."""
    import json
    import shutil

    from sam3d_addon import contract
    from sam3d_addon.pipeline import Sam3DPipeline

    if contract.DEFAULT_MODEL not in contract.available_models():
        pytest.skip("no shipped model in models/")
    folder = tmp_path / "cold"
    shutil.copytree(contract.MODELS_DIR / contract.DEFAULT_MODEL, folder)
    data = json.loads((folder / "model.json").read_text())
    data["sampler"]["noise_scale"] = {"shape": 1e-6}
    (folder / "model.json").write_text(json.dumps(data))

    logits = {}
    for name, model in (("plain", contract.DEFAULT_MODEL), ("cold", folder)):
        pipe = Sam3DPipeline(model=model, device="cpu", texture_model=None)
        inputs = _chair_inputs(pipe)
        logits[name] = [pipe.generate(inputs, seed=seed)["logits"] for seed in (0, 1)]
    assert np.abs(logits["plain"][0] - logits["plain"][1]).max() > 1.0
    assert np.abs(logits["cold"][0] - logits["cold"][1]).max() < 1e-2


def test_mean_of_samples_is_the_mean_of_the_single_samples_logits():
    """samples=N runs N samples in one batch: its logits are the mean of the N single runs' (sample
    k > 0 drawn from the seed pair (seed, k)), its pose is the first sample's, and samples=1 is
    the plain single sample.  A bad count is one line, refused before any model work."""
    from sam3d_addon import contract
    from sam3d_addon.errors import InputError
    from sam3d_addon.pipeline import Sam3DPipeline

    if contract.DEFAULT_MODEL not in contract.available_models():
        pytest.skip("no shipped model in models/")
    examples = contract.MODELS_DIR.parent / "examples"
    pipe = Sam3DPipeline(device="cpu", texture_model=None)
    inputs = _chair_inputs(pipe)
    singles = [pipe.generate(inputs, seed=seed, samples=1) for seed in (5, [5, 1], [5, 2])]
    mean3 = pipe.generate(inputs, seed=5, samples=3)
    assert np.abs(mean3["logits"] - np.mean([o["logits"] for o in singles], axis=0)).max() < 1e-3
    assert np.abs(singles[0]["logits"] - singles[1]["logits"]).max() > 1.0  # the rows really differ
    for a, b in zip(mean3["flow_pose"], singles[0]["flow_pose"]):
        assert np.allclose(a, b, atol=1e-4)
    default = pipe.card.sampler.get("samples", 1)  # what generate() does when not told
    expected = singles[0] if default == 1 else pipe.generate(inputs, seed=5, samples=default)
    assert np.array_equal(pipe.generate(inputs, seed=5)["logits"], expected["logits"])
    for bad in (0, 17, 2.5):
        with pytest.raises(InputError, match="samples must be a whole number from 1 to 16"):
            pipe.run(examples / "chair.png", [examples / "chair_mask.png"], samples=bad)
