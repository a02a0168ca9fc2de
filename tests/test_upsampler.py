"""The hd path's region upsampler: its network, its training cache of 256-px crops, its training job and
its ONNX graphs, on a real talking-head clip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipstream.models.upsampler import RegionUpsampler, load_upsampler
from lipstream.training.dataset import build_dataset, talking_sources

CLIP = "talking_hdtf_RD_Radio10_short"  # 512x512, the face about 250 px wide


@pytest.fixture(scope="module")
def cache(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset-256")
    sources = [s for s in talking_sources(shared_data / "talking") if s.clip_id == CLIP]
    build_dataset(sources, root, show_progress=False, crop_size=256)
    return root


def test_a_fresh_upsampler_is_the_bilinear_enlargement_and_learns_detail_on_top() -> None:
    torch.manual_seed(0)
    net = RegionUpsampler(width=8, depth=1)
    region = torch.rand(2, 3, 64, 128) * 2 - 1
    reference = net.encode_reference(torch.rand(2, 3, 128, 256) * 2 - 1)
    assert reference.shape == (2, 8, 64, 128)
    out = net(region, reference)
    bilinear = F.interpolate(region, scale_factor=2, mode="bilinear", align_corners=False)
    assert out.shape == (2, 3, 128, 256) and torch.equal(out, bilinear)
    target = torch.rand(2, 3, 128, 256) * 2 - 1
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        loss = (net(region, net.encode_reference(target)) - target).abs().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.9 * first, "the reference path lets it learn what the enlargement misses"


def test_the_cache_at_256_px_records_the_crop_and_how_much_the_face_was_scaled(cache: Path) -> None:
    index = json.loads((cache / "index.json").read_text())
    meta = index["clips"][CLIP]
    assert index["crop_size"] == meta["crop_size"] == 256
    assert 0.5 < meta["crop_scale"] < 1.0, "a 250-px face fills a 256-px crop without enlargement"
    crops = np.load(cache / CLIP / "crops.npy", mmap_mode="r")
    assert crops.shape == (meta["frames"], 256, 256, 3)
    with pytest.raises(ValueError, match="256-px crops; use another folder for rt at 128"):
        build_dataset([], cache, show_progress=False)


def test_upsampler_training_steps_checkpoints_resumes_and_exports(cache: Path, tmp_path: Path) -> None:
    from lipstream.training.config import UpsamplerTrainConfig
    from lipstream.training.upsampler_train import UpsamplerTrainer, export_upsampler

    config = UpsamplerTrainConfig(steps=2, batch=2, width=8, depth=1, sample_every=2, lambda_adv=0.1, disc_width=8)
    trainer = UpsamplerTrainer(cache, tmp_path / "run", config)
    before = trainer.net.to_rgb.weight.clone()
    assert trainer.run(log=False)["step"] == 2
    entry = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert {"l1", "ms_ssim", "laplacian", "l1_bilinear", "sharpness_ratio", "sharpness_ratio_bilinear"} <= set(entry)
    assert {"g_adv", "d", "r1"} <= set(entry), "the lips' discriminator trained, with R1 at step 0"
    assert (tmp_path / "run" / "samples" / "step-0000002.png").is_file()
    assert not torch.equal(before, trainer.net.to_rgb.weight), "the detail head moved off zero"

    again = UpsamplerTrainConfig(steps=3, batch=2, width=8, depth=1, lambda_adv=0.1, disc_width=8)
    resumed = UpsamplerTrainer(cache, tmp_path / "run", again, resume=True)
    assert torch.equal(resumed.disc.to_logit.weight, trainer.disc.to_logit.weight), "the discriminator resumes too"
    assert resumed.step == 2 and resumed.run(log=False)["step"] == 3
    weights = export_upsampler(tmp_path / "run" / "checkpoint.pt", tmp_path / "upsampler.pt")
    saved = torch.load(weights, weights_only=True)
    assert saved["config"] == {"width": 8, "depth": 1}
    assert all(t.dtype == torch.float16 for t in saved["state"].values())
    assert load_upsampler(weights).width == 8


def test_small_faces_are_left_out_of_upsampler_training(cache: Path, tmp_path: Path) -> None:
    from lipstream.training.config import UpsamplerTrainConfig
    from lipstream.training.upsampler_train import UpsamplerTrainer

    config = UpsamplerTrainConfig(steps=1, batch=2, width=8, depth=1, max_crop_scale=0.3)
    with pytest.raises(ValueError, match="none of the 1 training clips"):
        UpsamplerTrainer(cache, tmp_path / "run", config).run(log=False)


def test_the_onnx_graphs_give_what_the_network_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipstream.realtime.upsampling import Upsampler

    monkeypatch.setenv("LIPSTREAM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(1)
    net = RegionUpsampler(width=8, depth=2)
    torch.nn.init.normal_(net.to_rgb.weight, std=0.05)  # a detail head that does something
    torch.save({"config": net.config(), "state": net.state_dict()}, tmp_path / "up.pt")
    upsampler = Upsampler(tmp_path / "up.pt", cuda=False)
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)
    features = upsampler.reference_features(face)
    with torch.no_grad():
        expected_features = net.encode_reference(torch.from_numpy(face).permute(2, 0, 1)[None].float() / 127.5 - 1)
        assert np.abs(features - expected_features[0].numpy()).max() < 1e-4
        regions = rng.uniform(-1, 1, (3, 3, 64, 128)).astype(np.float32)
        out = upsampler.run(regions, np.stack([features] * 3))
        expected = net(torch.from_numpy(regions), torch.from_numpy(np.stack([features] * 3))).numpy()
    assert out.shape == (3, 3, 128, 256) and np.abs(out - expected).max() < 1e-4
    assert Upsampler(tmp_path / "up.pt", cuda=False).id == upsampler.id, "the second one reuses the export"


@pytest.fixture(scope="module")
def upsampler_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Upsampler weights for the hd path's tests, wherever $LIPSTREAM_UPSAMPLER points: a small network
    whose detail head is not zero, so that its output differs from the bilinear enlargement."""
    torch.manual_seed(2)
    net = RegionUpsampler(width=8, depth=1)
    torch.nn.init.normal_(net.to_rgb.weight, std=0.05)
    path = tmp_path_factory.mktemp("upsampler") / "upsampler.pt"
    torch.save({"config": net.config(), "state": {k: v.half() for k, v in net.state_dict().items()}}, path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIPSTREAM_UPSAMPLER", str(path))
        yield path


@pytest.fixture(scope="module")
def hd_avatar(upsampler_weights: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lipstream.avatars.prepare import prepare_avatar

    root = tmp_path_factory.mktemp("avatars")
    clip = shared_data / "talking" / "hdtf_RD_Radio10_short.mp4"
    # 22 frames: too few for a bank of its own mouths (avatars/detail.py), so the upsampler's path
    return prepare_avatar(clip, "radio", root=root, max_seconds=0.9, show_progress=False).path


def test_prepare_turns_the_hd_path_on_for_large_faces_only(
    hd_avatar: Path, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipstream.avatars.manifest import Manifest
    from lipstream.avatars.prepare import prepare_avatar

    hd = Manifest.read(hd_avatar).extra["hd"]
    assert hd["enabled"] and hd["mode"] == "auto" and hd["crop_scale"] < 0.9 and hd["method"] == "upsampler", hd
    grid = sorted((shared_data / "grid_s1" / "video").glob("*.mp4"))[0]
    small = prepare_avatar(grid, "grid", root=tmp_path, max_seconds=0.4, show_progress=False).manifest.extra["hd"]
    assert not small["enabled"] and "too small" in small["why"], small
    forced = prepare_avatar(grid, "grid", root=tmp_path, max_seconds=0.4, show_progress=False, hd="on")
    assert forced.manifest.extra["hd"]["enabled"]
    clip = shared_data / "talking" / "hdtf_RD_Radio10_short.mp4"
    off = prepare_avatar(clip, "off", root=tmp_path, max_seconds=0.4, show_progress=False, hd="off")
    assert not off.manifest.extra["hd"]["enabled"]
    with pytest.raises(ValueError, match="unknown hd mode 'big'"):
        prepare_avatar(clip, "bad", root=tmp_path, hd="big")
    monkeypatch.setenv("LIPSTREAM_UPSAMPLER", str(tmp_path / "missing.pt"))  # no upsampler weights at all
    without = prepare_avatar(clip, "plain", root=tmp_path, max_seconds=0.4, show_progress=False).manifest.extra["hd"]
    assert not without["enabled"] and "too few to lend the mouth their detail" in without["why"], without
    with pytest.raises(ValueError, match="too few to lend the mouth their detail"):
        prepare_avatar(clip, "forced", root=tmp_path, max_seconds=0.4, show_progress=False, hd="on")


def test_an_hd_avatar_speaks_through_the_upsampler_and_idles_as_its_template(
    hd_avatar: Path, speech: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from lipstream.realtime.render import rendered_frames
    from lipstream.realtime.runtime import build_runtime

    monkeypatch.setenv("LIPSTREAM_CACHE", str(tmp_path))
    runtime = build_runtime(str(hd_avatar), engine="onnxruntime")
    assets = runtime.assets
    assert assets.upsampler is not None and assets.hd_features.shape[1:] == (64, 128)
    samples = np.concatenate([speech[8000:24000], np.zeros(16000, np.float32)])

    async def collect() -> list:
        return [frame async for frame in rendered_frames(runtime, samples)]

    frames = asyncio.run(collect())
    assert len(frames) == 50
    kinds = [f.kind for f in frames]
    assert kinds[-1] == "idle" and "speech" in kinds
    templates = [assets.template(i) for i in range(assets.avatar.frame_count)]
    for frame in frames:
        assert frame.image.shape == templates[0].shape
        if frame.kind == "idle":
            assert any(np.array_equal(frame.image, t) for t in templates), "idle is the template itself"
    spoken = next(f for f in frames if f.kind == "speech")
    nearest = min(templates, key=lambda t: np.abs(spoken.image.astype(int) - t).mean())
    changed = np.abs(spoken.image.astype(int) - nearest).max(axis=2) > 8
    rows, cols = np.nonzero(changed)
    lips = np.median(np.asarray(assets.avatar.array("landmarks.npy"))[:, [13, 14]].mean(axis=1), axis=0)
    assert changed.sum() > 100 and abs(np.median(cols) - lips[0]) < 40 and abs(np.median(rows) - lips[1]) < 40


def test_a_failing_upsampler_leaves_its_frames_at_1x_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from lipstream.realtime.scheduler import upsample

    class Broken:
        def run(self, regions: np.ndarray, features: np.ndarray) -> np.ndarray:
            raise RuntimeError("the graph could not run")

    hd = SimpleNamespace(upsampler=Broken(), hd_features=np.zeros((8, 64, 128), np.float32))
    plain = SimpleNamespace(upsampler=None, hd_features=None)
    plans = [SimpleNamespace(mel=np.zeros(1), session=SimpleNamespace(assets=a)) for a in (hd, plain)]
    regions = [np.zeros((3, 64, 128), np.float32), np.ones((3, 64, 128), np.float32)]
    out = upsample(plans, regions)
    assert out[0] is regions[0] and out[1] is regions[1]
    assert "the region upsampler failed for 1 frames (the graph could not run); they are shown at 1x" in caplog.text
