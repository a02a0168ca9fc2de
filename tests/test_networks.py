"""The StyleSync networks of both profiles: shapes, Eq. 1 masking, the dW head, batching, gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from lipstream.models import PROFILES, Discriminator, StyleSync, SyncNet, UnknownProfileError, get_profile
from lipstream.models.generator import channel_shift_layout, channel_shift_size
from lipstream.models.personalization import channel_shift_of
from lipstream.models.report import example_inputs, profile_report


@pytest.fixture(scope="module")
def rt() -> StyleSync:
    torch.manual_seed(0)
    return StyleSync("rt").eval()


def render(model: StyleSync, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    face = model.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
    return model.render(inputs["mel"], face.f_f, face.delta_w, face.maps)


@pytest.mark.parametrize("name", list(PROFILES))
def test_shapes_of_every_network(name: str) -> None:
    torch.manual_seed(0)
    model = StyleSync(name).eval()
    cfg = model.cfg
    inputs = example_inputs(cfg, batch=2)
    with torch.no_grad():
        face = model.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
        out = model.render(inputs["mel"], face.f_f, face.delta_w, face.maps)
        logits = Discriminator(cfg)(out)
    assert [tuple(m.shape[1:]) for m in face.maps] == cfg.face_map_shapes()
    assert face.f_f.shape == (2, cfg.face_dim)
    assert face.delta_w.shape == (2, cfg.num_layers, cfg.w_dim)
    assert out.shape == (2, 3, *cfg.output_shape)
    assert logits.shape == (2, 1)
    assert torch.isfinite(out).all()


def test_hq_is_the_papers_size() -> None:
    hq = get_profile("hq")
    assert (hq.face_size, hq.region_rows, hq.num_layers) == (256, 256, 14)
    assert hq.channels == (512, 512, 512, 512, 512, 256, 128)  # StyleGAN2 at 256 px
    assert hq.masked_from_layer == 7  # layers 8..14 (1-based) are masked


def test_rt_fits_the_cpu_budget() -> None:
    report = profile_report("rt")
    assert report["gflops_per_frame"] <= 1.5
    assert report["output_shape"] == [64, 128]


def test_masked_target_pixels_never_reach_the_features(rt: StyleSync) -> None:
    inputs = example_inputs(rt.cfg)
    changed = dict(inputs, target=inputs["target"] + 5.0 * torch.randn_like(inputs["target"]) * inputs["mask"])
    with torch.no_grad():
        a = rt.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
        b = rt.encode_face(changed["target"], changed["reference"], changed["mask"])
    for map_a, map_b in zip(a.maps, b.maps, strict=True):
        assert torch.equal(map_a, map_b)


def test_eq1_zeroes_high_resolution_maps_under_the_mask(rt: StyleSync) -> None:
    cfg = rt.cfg
    inputs = example_inputs(cfg)
    with torch.no_grad():
        maps = rt.encode_face(inputs["target"], inputs["reference"], inputs["mask"]).maps
    for layer, fmap in enumerate(maps):
        level = cfg.layer_level(layer)
        width, rows = cfg.level_width(level), cfg.level_rows(level)
        pooled = torch.nn.functional.max_pool2d(inputs["mask"], cfg.face_size // width)[:, :, width - rows :]
        under_mask = fmap * pooled
        if layer >= cfg.masked_from_layer:
            assert under_mask.abs().max() == 0, f"layer {layer + 1} should be masked"
        else:
            assert under_mask.abs().max() > 0, f"layer {layer + 1} keeps the reference's information"


def test_delta_w_starts_at_zero_and_is_wired_in(rt: StyleSync) -> None:
    inputs = example_inputs(rt.cfg)
    with torch.no_grad():
        face = rt.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
        assert torch.count_nonzero(face.delta_w) == 0
        general = rt.render(inputs["mel"], face.f_f, torch.zeros_like(face.delta_w), face.maps)
        assert torch.equal(general, rt.render(inputs["mel"], face.f_f, face.delta_w, face.maps))
        shifted = rt.render(inputs["mel"], face.f_f, face.delta_w + 0.5, face.maps)
    assert (shifted - general).abs().max() > 1e-3


def test_a_per_sample_channel_shift_equals_shifting_the_model_of_that_sample(rt: StyleSync) -> None:
    """delta_p (a personalised avatar's per-channel dP, a frame-graph input) moves exactly the
    parameters of channel_shift_layout, sample by sample: a batch of two avatars with different
    shifts renders as two models, each with its own biases moved."""
    layout = channel_shift_layout(rt.cfg)
    assert channel_shift_size(rt.cfg) == sum(size for _, size in layout) == 3919
    inputs = example_inputs(rt.cfg, batch=2, seed=5)
    shifts = 0.3 * torch.randn(2, channel_shift_size(rt.cfg), generator=torch.Generator().manual_seed(6))
    shifts[1] = 0  # a general avatar beside a personalised one
    with torch.no_grad():
        face = rt.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
        batched = rt.render(inputs["mel"], face.f_f, face.delta_w, face.maps, shifts)
        for sample in range(2):
            model = copy.deepcopy(rt)
            params = dict(model.generator.named_parameters())
            for (name, _), part in zip(layout, torch.split(shifts[sample], [n for _, n in layout]), strict=True):
                params[name].add_(part.view_as(params[name]))
            recovered = channel_shift_of(model.generator, dict(rt.generator.named_parameters()))
            torch.testing.assert_close(recovered, shifts[sample], rtol=0, atol=1e-6)
            one = {k: v[sample : sample + 1] for k, v in inputs.items()}
            alone = render(model, one)
            torch.testing.assert_close(batched[sample : sample + 1], alone, rtol=1e-5, atol=1e-4)
        plain = rt.render(inputs["mel"], face.f_f, face.delta_w, face.maps)
    torch.testing.assert_close(batched[1], plain[1], rtol=1e-5, atol=1e-5)
    assert (batched[0] - plain[0]).abs().max() > 1e-2


def test_audio_and_face_both_drive_the_output(rt: StyleSync) -> None:
    inputs = example_inputs(rt.cfg)
    with torch.no_grad():
        base = render(rt, inputs)
        other_audio = render(rt, dict(inputs, mel=-inputs["mel"]))
        other_face = render(rt, dict(inputs, reference=torch.flip(inputs["reference"], dims=[3])))
    assert (base - other_audio).abs().mean() > 1e-3
    assert (base - other_face).abs().mean() > 1e-3


def test_the_motion_gain_scales_how_far_the_audio_moves_the_mouth(rt: StyleSync) -> None:
    """Gain 1 renders as trained, gain 0 renders the mouth of silence whatever the audio, and each sample
    of a batch takes its own gain."""
    from lipstream.dsp import MelConfig
    from lipstream.export.graphs import FrameGraph

    graph = FrameGraph(rt)
    inputs = example_inputs(rt.cfg, batch=3, seed=5)
    silence = torch.full_like(inputs["mel"], -MelConfig().max_abs_value)
    with torch.no_grad():
        face = rt.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
        zeros, shift = torch.zeros_like(face.delta_w), torch.zeros(3, channel_shift_size(rt.cfg))

        def frame(mel: torch.Tensor, gain: list[float]) -> torch.Tensor:
            gains = torch.tensor(gain)[:, None]
            return graph(mel, face.f_f, face.delta_w, zeros, torch.zeros(3, 1), gains, shift, tuple(face.maps))[0]

        as_trained = rt.render(inputs["mel"], face.f_f, face.delta_w, face.maps)
        at_rest = rt.render(silence, face.f_f, face.delta_w, face.maps)
        torch.testing.assert_close(frame(inputs["mel"], [1.0, 1.0, 1.0]), as_trained, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(frame(inputs["mel"], [0.0, 0.0, 0.0]), at_rest, rtol=1e-4, atol=1e-4)
        mixed = frame(inputs["mel"], [1.0, 0.0, 1.5])
    torch.testing.assert_close(mixed[:2], torch.stack([as_trained[0], at_rest[1]]), rtol=1e-4, atol=1e-4)
    further = (mixed[2] - at_rest[2]).abs().mean()
    assert further > 1.2 * (as_trained[2] - at_rest[2]).abs().mean(), "gain 1.5 moves the mouth further"


def test_each_sample_of_a_batch_is_rendered_independently(rt: StyleSync) -> None:
    inputs = example_inputs(rt.cfg, batch=3, seed=4)
    with torch.no_grad():
        batched = render(rt, inputs)
        single = torch.cat([render(rt, {k: v[i : i + 1] for k, v in inputs.items()}) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-4)  # float rounding only


def test_every_parameter_learns() -> None:
    torch.manual_seed(0)
    model = StyleSync("rt")
    inputs = example_inputs(model.cfg, batch=2)
    out = model(inputs["mel"], inputs["target"], inputs["reference"], inputs["mask"])
    (out.square().mean() + model.delta_w(torch.randn(2, model.cfg.face_dim)).square().mean()).backward()
    for name, param in model.named_parameters():
        if name.startswith("delta_w.hidden"):  # behind the zero-initialised output layer at step 0
            continue
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_syncnet_gives_a_cosine_per_sample_and_finds_matching_pairs() -> None:
    torch.manual_seed(0)
    net = SyncNet()
    frames, mel = torch.randn(4, 15, 32, 64), torch.randn(4, 1, 80, 16)
    cos = net(frames, mel)
    assert cos.shape == (4,) and (cos.abs() <= 1 + 1e-6).all()
    # The embeddings are trainable towards agreement: a few steps on a fixed pair raise its cosine.
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = net(frames[:1], mel[:1]).item()
    for _ in range(5):
        optimiser.zero_grad()
        (-net(frames[:1], mel[:1]).mean()).backward()
        optimiser.step()
    assert net(frames[:1], mel[:1]).item() > start + 0.05


def test_wrong_shapes_are_refused_at_the_entry_points(rt: StyleSync) -> None:
    inputs = example_inputs(rt.cfg)
    with pytest.raises(AssertionError, match=r"expected \[B, 1, 80, 16\]"):
        rt.audio_encoder(torch.zeros(1, 1, 80, 17))
    with pytest.raises(AssertionError, match="expected"):
        rt.encode_face(inputs["target"][:, :, :64], inputs["reference"], inputs["mask"])


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(UnknownProfileError, match="choose one of: rt, hq"):
        get_profile("fast")
