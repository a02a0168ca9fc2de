"""The training cache and its loaders, on real GRID and talking-head clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lipstream.training.dataset import (
    HELD_OUT_IDENTITIES,
    ClipSource,
    build_dataset,
    grid_sources,
    talking_identity,
    talking_sources,
)
from lipstream.training.loaders import GeneratorSamples, SyncPairs, load_clips


@pytest.fixture(scope="module")
def cache(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    grid = [s for s in grid_sources(shared_data / "grid_s1") if s.split == "train"][:3]
    talking = [s for s in talking_sources(shared_data / "talking") if s.clip_id == "talking_hdtf_RD_Radio10_short"]
    broken = tmp_path_factory.mktemp("broken") / "broken.mp4"
    broken.write_bytes(b"not a video")
    build_dataset([*grid, *talking, ClipSource(broken, "broken", "nobody", "train")], root, show_progress=False)
    return root


def test_sources_follow_the_splits_and_hold_out_identities(shared_data: Path) -> None:
    grid = grid_sources(shared_data / "grid_s1")
    assert {s.split: sum(x.split == s.split for x in grid) for s in grid} == {"train": 900, "val": 50, "test": 50}
    talking = talking_sources(shared_data / "talking")
    held = {s.identity for s in talking if s.split == "test"}
    assert held == set(HELD_OUT_IDENTITIES) and len(held) >= 4
    assert talking_identity("hdtf_KatieHill_000") == "hdtf_KatieHill" and talking_identity("may_5s") == "may"


def test_the_cache_holds_aligned_crops_landmarks_and_mel(cache: Path) -> None:
    index = json.loads((cache / "index.json").read_text())
    assert len(index["clips"]) == 4 and "broken" in index["failed"]
    meta = index["clips"]["talking_hdtf_RD_Radio10_short"]
    assert meta["frames"] == 52  # 2.07 s of 29.97 fps video at 25 fps
    clip = cache / "talking_hdtf_RD_Radio10_short"
    crops, landmarks, mel = (np.load(clip / f"{n}.npy") for n in ("crops", "landmarks", "mel"))
    assert crops.shape == (52, 128, 128, 3) and crops.dtype == np.uint8
    assert landmarks.shape == (52, 478, 2)
    assert mel.shape == (80, 1 + 52 * 640 // 200)
    lips = landmarks[:, [13, 14], :].astype(float)
    assert np.all((lips[..., 1] > 64) & (lips[..., 1] < 128)), "the mouth is in the crop's lower half"


def test_building_again_skips_unchanged_clips(cache: Path, shared_data: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*/meta.json")}
    grid = [s for s in grid_sources(shared_data / "grid_s1") if s.split == "train"][:3]
    build_dataset(grid, cache, show_progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*/meta.json")} == before


def test_sync_pairs_are_balanced_and_shifted_pairs_are_really_shifted(cache: Path) -> None:
    pairs = SyncPairs(load_clips(cache, "train"), length=200)
    labels = []
    for i in range(200):
        frames, mel, label = pairs[i]
        assert frames.shape == (15, 64, 128) and mel.shape == (1, 80, 16)
        assert float(frames.min()) >= -1.0 and float(frames.max()) <= 1.0
        labels.append(float(label))
    assert 0.35 < np.mean(labels) < 0.65


def test_generator_samples_bring_targets_windows_reference_and_mask(cache: Path) -> None:
    sample = GeneratorSamples(load_clips(cache, "train"), length=10)[3]
    assert sample["targets"].shape == (5, 3, 128, 128)
    assert sample["mels"].shape == (5, 1, 80, 16) and sample["sync_mel"].shape == (1, 80, 16)
    assert sample["reference"].shape == (3, 128, 128) and sample["mask"].shape == (1, 128, 128)
    assert not torch.equal(sample["reference"], sample["targets"][0])


def test_syncnet_training_steps_checkpoints_and_resumes(cache: Path, tmp_path: Path) -> None:
    from lipstream.training.syncnet_train import SyncTrainConfig, export_expert, train_syncnet, validate

    config = SyncTrainConfig(steps=2, batch=4, validate_every=1000)
    assert train_syncnet(cache, tmp_path, config, log=False)["step"] == 2
    resumed = train_syncnet(cache, tmp_path, SyncTrainConfig(steps=4, batch=4), resume=True, log=False)
    assert resumed["step"] == 4 and np.isfinite(resumed["loss"])
    small = export_expert(tmp_path / "checkpoint.pt", tmp_path / "expert.pt")
    state = torch.load(small, weights_only=True)
    assert all(t.dtype == torch.float16 for t in state.values())

    from lipstream.models.syncnet import SyncNet

    net = SyncNet()
    net.load_state_dict({k: v.float() for k, v in state.items()})
    report = validate(net, load_clips(cache, "train"), torch.device("cpu"), max_offset=5)
    assert report["clips"] >= 3 and 0.0 <= report["offset_accuracy"] <= 1.0 and report["mean_confidence"] >= 0


def test_evaluation_scores_the_baselines_and_a_model(cache: Path, tmp_path: Path) -> None:
    from lipstream.training.evaluate import evaluate

    report = evaluate(cache, tmp_path, split="train", identity="grid_s1", max_clips=2)
    systems = report["systems"]
    assert systems["ground-truth"]["psnr_db"] == float("inf") and systems["ground-truth"]["ssim"] == 1.0
    assert systems["ground-truth"]["lmd_px"] == 0.0
    assert 10 < systems["static"]["psnr_db"] < 60 and systems["static"]["lmd_px"] > 0
    assert systems["model"]["psnr_db"] < systems["static"]["psnr_db"], "an untrained generator is worse than copying"
    assert (tmp_path / "side_by_side.mp4").stat().st_size > 10_000 and (tmp_path / "contact_sheet.png").is_file()
