"""The training cache and its loaders, on real GRID and talking-head clips."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lipstream.cli import main
from lipstream.dsp.voice import VoiceReference, speech_mask
from lipstream.training.dataset import (
    HELD_OUT_IDENTITIES,
    ClipSource,
    build_dataset,
    grid_sources,
    talking_identity,
    talking_sources,
)
from lipstream.training.loaders import MIN_OFFSET, GeneratorSamples, SyncPairs, load_clips, to_unit


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
    audio = np.load(clip / "audio.npy")
    assert audio.shape == (52 * 640,) and audio.dtype == np.float16 and np.abs(audio).max() > 0.03
    lips = landmarks[:, [13, 14], :].astype(float)
    assert np.all((lips[..., 1] > 64) & (lips[..., 1] < 128)), "the mouth is in the crop's lower half"
    for clip_id, meta in index["clips"].items():  # too short to judge a shift by; GRID's sound is in step
        assert not meta["audio_sync"]["suspect"] and meta["audio_sync"]["seconds"] < 10
        assert clip_id.startswith("talking") or -1 <= meta["audio_sync"]["lag_frames"] <= 3, meta


def test_building_again_skips_unchanged_clips(cache: Path, shared_data: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*/meta.json")}
    grid = [s for s in grid_sources(shared_data / "grid_s1") if s.split == "train"][:3]
    build_dataset(grid, cache, show_progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*/meta.json")} == before


def test_the_voice_reference_is_the_mean_of_one_identitys_speech_and_a_wrong_identity_is_refused(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lipstream dataset voice` writes GRID s1's mean log-mel over his speech frames, which loads as the
    reference sessions are shifted to; an identity the cache does not hold is a usage error."""
    out = tmp_path / "voice.json"
    assert main(["dataset", "voice", "--cache", str(cache), "--out", str(out)]) == 0
    reference = VoiceReference.from_json(out)
    mels = [
        np.load(cache / c / "mel.npy").astype(np.float64) for c in sorted(os.listdir(cache)) if c.startswith("grid_")
    ]
    speech = np.concatenate([mel[:, speech_mask(mel)] for mel in mels], axis=1)
    assert json.loads(out.read_text())["speech_frames"] == speech.shape[1] > 100
    np.testing.assert_allclose(reference.mean, speech.mean(axis=1), atol=1e-4)
    assert main(["dataset", "voice", "--cache", str(cache), "--identity", "nobody_here", "--out", str(out)]) == 2
    assert "nobody_here" in capsys.readouterr().err


def test_sync_pairs_bring_an_in_sync_window_and_a_shifted_one_of_the_same_clip(cache: Path) -> None:
    clips = load_clips(cache, "train")
    pairs = SyncPairs(clips, length=50)
    windows = {
        c.meta["clip_id"]: np.stack([c.sync_window(f) for f in range(c.frames) if c.has_sync_window(f)]) for c in clips
    }
    for i in range(50):
        faces, in_sync, off_sync = pairs[i]
        assert faces.shape == (5, 3, 128, 128) and in_sync.shape == off_sync.shape == (1, 80, 16)
        assert float(faces.min()) >= -1.0 and float(faces.max()) <= 1.0
        # Both windows come from one clip, at frames at least MIN_OFFSET apart.
        owners = [
            (clip_id, np.flatnonzero((w == mel[0].numpy()).all(axis=(1, 2))))
            for mel in (in_sync, off_sync)
            for clip_id, w in windows.items()
            if (w == mel[0].numpy()).all(axis=(1, 2)).any()
        ]
        assert owners[0][0] == owners[-1][0]
        assert np.abs(owners[0][1][:, None] - owners[-1][1][None]).max() >= MIN_OFFSET


def test_the_expert_sees_the_lower_half_of_each_face_area_resized() -> None:
    from lipstream.models.syncnet import SyncNet

    net = SyncNet()
    faces = torch.zeros(2, 5, 3, 128, 128)
    faces[..., 64:, :] = 1.0  # white lower half, black upper half
    visual = net.visual_input(faces)
    assert visual.shape == (2, 15, net.cfg.crop_rows, net.cfg.crop_width)
    assert torch.all(visual == 1.0), "nothing of the upper half reaches the expert"


def test_contrastive_loss_falls_when_the_expert_learns_a_batch() -> None:
    from lipstream.models.syncnet import SyncNet
    from lipstream.training.syncnet_train import contrastive_loss

    torch.manual_seed(0)
    net = SyncNet()
    faces = torch.randn(8, 5, 3, 128, 128).clamp(-1, 1)
    in_sync, off_sync = torch.randn(8, 1, 80, 16), torch.randn(8, 1, 80, 16)
    first, accuracy = contrastive_loss(net, faces, in_sync, off_sync, 0.1)
    assert abs(float(first) - np.log(16)) < 1.0 and 0.0 <= accuracy <= 1.0
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(30):
        loss, accuracy = contrastive_loss(net, faces, in_sync, off_sync, 0.1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss) < 0.5 * float(first) and accuracy == 1.0


def test_generator_samples_bring_targets_windows_reference_and_mask(cache: Path) -> None:
    sample = GeneratorSamples(load_clips(cache, "train"), length=10)[3]
    assert sample["targets"].shape == (5, 3, 128, 128)
    assert sample["mels"].shape == (5, 1, 80, 16) and sample["sync_mel"].shape == (1, 80, 16)
    assert sample["reference"].shape == (3, 128, 128) and sample["mask"].shape == (1, 128, 128)
    assert not torch.equal(sample["reference"], sample["targets"][0])


def test_augmented_samples_are_mirrored_and_colour_cast_alike_in_every_frame_and_the_reference(cache: Path) -> None:
    clips = load_clips(cache, "train")
    plain = GeneratorSamples(clips, length=20, seed=3)
    augmented = GeneratorSamples(clips, length=20, seed=3, augment=True)
    mirrored = coloured = 0
    for i in range(20):
        a, b = plain[i], augmented[i]
        assert torch.equal(a["mels"], b["mels"]) and torch.equal(a["sync_mel"], b["sync_mel"])
        flipped = np.corrcoef(a["targets"].flip(-1).flatten(), b["targets"].flatten())[0, 1]
        straight = np.corrcoef(a["targets"].flatten(), b["targets"].flatten())[0, 1]
        mirrored += flipped > straight
        source = a["targets"].flip(-1) if flipped > straight else a["targets"]
        reference = a["reference"].flip(-1) if flipped > straight else a["reference"]
        # One gain and shift per colour channel for all five frames and the reference (up to clipping).
        casts = []
        for channel in range(3):
            x = torch.cat([source[:, channel].flatten(), reference[channel].flatten()])
            y = torch.cat([b["targets"][:, channel].flatten(), b["reference"][channel].flatten()])
            inside = (x.abs() < 0.99) & (y.abs() < 0.99)
            fit = np.polyfit(x[inside].numpy(), y[inside].numpy(), 1)
            residual = np.abs(np.polyval(fit, x[inside].numpy()) - y[inside].numpy()).max()
            assert residual < 1e-4  # the reference went through the very same cast
            assert 0.8 * 0.85 - 1e-3 <= fit[0] <= 1.2 * 1.15 + 1e-3 and abs(fit[1]) <= 0.18 + 1e-3
            casts.append(fit[0])
        coloured += np.ptp(casts) > 0.01
    assert 3 <= mirrored <= 17
    assert coloured >= 15  # the channels get different gains: a colour cast, not only brightness


def test_voice_augmentation_warps_the_generators_audio_and_leaves_the_experts_and_the_frames(cache: Path) -> None:
    from lipstream.dsp import MelConfig

    clips = load_clips(cache, "train")
    clip, cfg = clips[0], MelConfig()
    # the cache's audio is the clip's: heard unwarped (alpha 1.0 recomputed), it gives the cached mel
    assert np.abs(clip.warped_mel(1.0, cfg) - clip.mel).max() == 0
    clip._warped.pop(1.0)
    assert np.abs(clip.warped_mel(1.0, cfg) - clip.mel).max() < 0.05  # 0.6 dB: both are float16 in the cache

    def centroid(mel: np.ndarray) -> float:  # mean mel bin of the energy in speech
        power = 10.0 ** (mel[:, mel.max(axis=0) > 0])
        return float((np.arange(80)[:, None] * power).sum() / power.sum())

    # above 1, formants come down the mel axis (a higher voice heard as a lower one), below 1 they go up
    own = centroid(clip.mel)
    assert centroid(clip.warped_mel(1.2, cfg)) < own - 0.4 and centroid(clip.warped_mel(0.85, cfg)) > own + 0.4
    plain = GeneratorSamples(clips, length=12, seed=5)
    voiced = GeneratorSamples(clips, length=12, seed=5, voice=(1.25, 0.5))
    changed = 0
    for i in range(12):
        a, b = plain[i], voiced[i]
        assert torch.equal(a["targets"], b["targets"]) and torch.equal(a["sync_mel"], b["sync_mel"])
        assert b["mels"].abs().max() <= 4.0
        changed += not torch.allclose(a["mels"], b["mels"], atol=0.05)
    assert changed >= 9


def test_grid_share_sets_how_often_grid_clips_are_drawn(cache: Path) -> None:
    clips = load_clips(cache, "train")
    assert {c.meta["identity"] for c in clips} == {"grid_s1", "hdtf_RD_Radio10"}
    talking = load_clips(cache, "train", {"hdtf_RD_Radio10"})[0]
    first_talking_frame = to_unit(np.asarray(talking.crops))
    # None: no GRID share, every person equally likely, however many clips GRID has.
    for share, expected in ((0.0, 1.0), (1.0, 0.0), (0.5, 0.5), (None, 0.5)):
        data = GeneratorSamples(clips, length=200, grid_share=share)
        from_talking = np.mean(
            [any(torch.equal(data[i]["reference"], f) for f in first_talking_frame) for i in range(0, 200, 4)]
        )
        assert abs(from_talking - expected) <= 0.2


def test_syncnet_training_steps_checkpoints_and_resumes(cache: Path, tmp_path: Path) -> None:
    from lipstream.training.syncnet_train import SyncTrainConfig, export_expert, train_syncnet, validate

    config = SyncTrainConfig(steps=2, batch=4, validate_every=1000)
    first = train_syncnet(cache, tmp_path, config, log=False)
    assert first["step"] == 2 and 0 <= first["accuracy"] <= 1
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
    assert 5 < systems["model"]["psnr_db"] < 60 and 0 < systems["model"]["ssim"] < 1
    assert (tmp_path / "side_by_side.mp4").stat().st_size > 10_000 and (tmp_path / "contact_sheet.png").is_file()
    truth = systems["ground-truth"]["lip_audio"]
    assert truth["clips"] == 2 and truth["r"] > 0.5 and abs(truth["lag_frames"]) <= 1


def test_lip_audio_correlation_follows_real_speech_not_a_still_or_shifted_mouth(cache: Path) -> None:
    from lipstream.training.evaluate import MouthLandmarks, lip_audio

    clip = load_clips(cache, "train", {"grid_s1"})[0]
    crops, mel, mouths = np.asarray(clip.crops), clip.mel, MouthLandmarks()
    r, lag = lip_audio(crops, mel, mouths)
    assert r > 0.5 and abs(lag) <= 1, "GRID's own mouth opens with its loudness"
    shifted, _ = lip_audio(crops[12:], mel, mouths)  # the sound half a second early
    assert shifted < r - 0.1
    still = lip_audio(np.repeat(crops[:1], len(crops), axis=0), mel, mouths)
    assert still is None or abs(still[0]) < 0.05


def test_a_person_with_one_clip_is_rendered_from_its_own_first_half(cache: Path) -> None:
    from lipstream.training.evaluate import reference_pairs

    clips = load_clips(cache, "train")
    pairs = reference_pairs(clips)
    talking = [(clip, ref) for clip, ref in pairs if clip.meta["identity"] != "grid_s1"]
    (original,) = [c for c in clips if c.meta["identity"] != "grid_s1"]
    ((half, reference),) = talking
    cut = original.frames - half.frames
    assert cut % 5 == 0 and abs(cut - original.frames / 2) <= 5 and half.meta["clip_id"].endswith("[2nd half]")
    assert np.array_equal(half.crops[0], original.crops[cut]) and np.array_equal(reference, original.crops[cut // 2])
    assert np.array_equal(half.sync_window(0), original.sync_window(cut))  # mel stays aligned with frames
    grid = [(clip, ref) for clip, ref in pairs if clip.meta["identity"] == "grid_s1"]
    assert len(grid) == 3 and all(clip.frames == c.frames for (clip, _), c in zip(grid, clips, strict=False))
    assert not any(np.array_equal(ref, clip.crops[clip.frames // 2]) for clip, ref in grid)  # another clip's frame


def test_generator_training_steps_with_every_loss_checkpoints_resumes_and_exports(cache: Path, tmp_path: Path) -> None:
    from lipstream.models.syncnet import SyncNet
    from lipstream.models.weights import load_stylesync
    from lipstream.training.generator_train import GeneratorTrainConfig, GeneratorTrainer, export_generator

    expert = tmp_path / "expert.pt"
    torch.save({k: v.half() for k, v in SyncNet().state_dict().items()}, expert)
    config = GeneratorTrainConfig(steps=2, batch=2, gan_from_step=1, r1_every=1, sample_every=2, expert=str(expert))
    trainer = GeneratorTrainer(cache, tmp_path / "run", config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.run(log=False)["step"] == 2
    first = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"l1", "ms_ssim", "sync", "g_adv", "d", "r1"} <= set(first[-1])
    assert (tmp_path / "run" / "samples" / "step-0000002.png").is_file()
    assert (tmp_path / "run" / "loss_curves.png").is_file()
    after = trainer.model.state_dict()
    rgb = "generator.to_rgbs.0.conv.conv.weight"
    assert not torch.equal(before[rgb], after[rgb])
    assert torch.equal(before["delta_w.out.weight"], after["delta_w.out.weight"]), "dW stays zero in general training"

    resumed = GeneratorTrainer(cache, tmp_path / "run", GeneratorTrainConfig(steps=3, batch=2), resume=True)
    assert resumed.step == 2 and resumed.run(log=False)["step"] == 3
    weights = export_generator(tmp_path / "run" / "checkpoint.pt", tmp_path / "rt.pt")
    assert all(t.dtype == torch.float16 for t in torch.load(weights, weights_only=True).values())
    assert load_stylesync("rt", weights)[1].startswith("rt-trained-")


def test_an_audio_fine_tune_with_other_voices_moves_only_the_audio_encoder_and_mapping(
    cache: Path, tmp_path: Path
) -> None:
    from lipstream.training.generator_train import GeneratorTrainConfig, GeneratorTrainer

    config = GeneratorTrainConfig(steps=2, batch=2, trainable="audio", voice_factor=1.25, voice_level=0.5)
    trainer = GeneratorTrainer(cache, tmp_path / "run", config)
    assert trainer.batches().__next__()["mels"].shape == (2, 5, 1, 80, 16)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.run(log=False)["step"] == 2
    after = trainer.model.state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"audio_encoder", "mapping"}
    with pytest.raises(ValueError, match="'all' or 'audio'"):
        GeneratorTrainer(cache, tmp_path / "other", replace(config, trainable="face"))


def test_voice_distillation_brings_warped_voices_to_the_teachers_features_and_moves_only_the_audio_encoder(
    cache: Path, tmp_path: Path
) -> None:
    from lipstream.models.stylesync import StyleSync
    from lipstream.models.weights import load_stylesync
    from lipstream.training.config import VoiceDistillConfig
    from lipstream.training.generator_train import export_generator
    from lipstream.training.voice_distill import VoiceDistiller, WarpedWindows, warp_grid

    np.testing.assert_allclose(warp_grid(1.25), np.arange(0.8, 1.2501, 0.05), atol=1e-9)
    # a teacher that hears a warp (the seeded networks), not the shipped weights, which were distilled so
    seeded = tmp_path / "seeded.pt"
    torch.manual_seed(0)
    torch.save({k: v.half() for k, v in StyleSync("rt").state_dict().items()}, seeded)
    config = VoiceDistillConfig(steps=80, batch=32, lr=2e-3, validate_every=40, sample_every=80, init=str(seeded))
    trainer = VoiceDistiller(cache, tmp_path / "run", config)
    windows = WarpedWindows(load_clips(cache, "train"), trainer.reference, config.warp, 32, seed=7)
    # log-uniform: a step of 0.05 is a wider stretch of log-space at 0.8 than at 1.25
    assert windows.weights.sum() == pytest.approx(1.0) and windows.weights[1] > windows.weights[-2]
    fixed = [(clip, f) for clip in load_clips(cache, "train") for f in (10, 40)]
    before = trainer.by_warp(windows, fixed)
    assert before["student_1.0"] == before["teacher_1.0"] == 0.0  # the student starts as the teacher
    assert before["teacher_1.25"] > 0.01 and before["teacher_0.8"] > 0.01  # warped, the teacher hears otherwise
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.run(log=False)
    assert result["step"] == 80 and {"warped", "recorded", "val_student_1.25"} <= set(result)
    after = trainer.by_warp(windows, fixed)
    for alpha in (0.8, 1.25):
        assert after[f"student_{alpha}"] < 0.8 * before[f"teacher_{alpha}"], (alpha, before, after)
    assert after["student_1.0"] < 0.5 * before["teacher_1.25"]  # and it still hears the voice as it was
    moved = {k.split(".")[0] for k, v in trainer.model.state_dict().items() if not torch.equal(state[k], v)}
    assert moved == {"audio_encoder"}
    assert (tmp_path / "run" / "samples" / "step-0000080.png").is_file()

    weights = export_generator(tmp_path / "run" / "checkpoint.pt", tmp_path / "rt.pt")
    assert load_stylesync("rt", weights)[1].startswith("rt-trained-")
    # resumed after other weights were shipped: the run keeps the teacher it started with
    resumed = VoiceDistiller(cache, tmp_path / "run", replace(config, steps=82, init=str(weights)), resume=True)
    teacher = trainer.teacher.audio_encoder.state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in resumed.teacher.audio_encoder.state_dict().items())
    assert resumed.step == 80 and resumed.run(log=False)["step"] == 82


def test_personalisation_learns_dw_and_dp_and_stores_them_with_the_avatar(
    cache: Path, shared_data: Path, tmp_path: Path
) -> None:
    from lipstream.avatars import Avatar
    from lipstream.avatars.prepare import prepare_avatar
    from lipstream.models.weights import WEIGHTS_DIR, load_stylesync
    from lipstream.realtime.runtime import load_avatar, own_weights
    from lipstream.training.personalize import PersonalizeConfig, PersonalizeError, personalize

    source = grid_sources(shared_data / "grid_s1")[-1].path  # 3 s
    prepared = prepare_avatar(source, "grid", root=tmp_path, max_seconds=3.2, show_progress=False)
    avatar = Avatar.load(prepared.path)
    template = (avatar.frame_count - 25) // 5 * 5
    steps = round(2 * template / 5 / 2)
    general_id = avatar.manifest.model_id
    assert not np.any(avatar.array("features/delta_w.npy"))  # the general model: dW = 0
    maps_before = np.array(avatar.array("features/maps_09.npy"))
    expert = WEIGHTS_DIR.parent / "experts" / "syncnet-seed0.pt"
    config = PersonalizeConfig(epochs=2, batch=2, lr=1e-3, hold_out_seconds=1.0, delta_p="full")

    summary = personalize(avatar, cache, expert, config, log=False)
    held_out = summary["held_out"]  # the 1 s it did not train on, scored for three systems
    assert held_out["seconds"] == (avatar.frame_count - template) / 25 >= 1.0
    for system in ("personalized", "general", "static"):
        assert held_out[system]["psnr_db"] > 15 and 0 < held_out[system]["ssim"] <= 1, system

    assert summary["template_frames"] == template >= 50
    assert summary["held_out_frames"] == avatar.frame_count - template
    assert summary["steps"] == steps and summary["base_model_id"] == general_id
    log = [json.loads(line) for line in (avatar.path / "personal" / "personalize.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == steps and log[-1]["delta_p_sq"] > 0 and log[-1]["delta_w_sq"] > 0
    weights = own_weights(str(avatar.path))
    assert weights == avatar.path / "personal" / "rt.pt"
    _, model_id = load_stylesync("rt", weights)
    assert model_id == summary["model_id"] != general_id
    personal = load_avatar(str(avatar.path), model_id=model_id)  # checksums verified, features fresh
    assert personal.manifest.extra["personalized"]["steps"] == steps
    assert personal.manifest.extra["personalized"]["held_out"] == json.loads(json.dumps(held_out))
    assert np.abs(personal.array("features/delta_w.npy")).mean() > 0
    model = load_stylesync("rt", weights)[0]
    with torch.no_grad():  # dW is recomputed from the cached f_f; the frozen encoder's maps are kept
        expected = model.delta_w(torch.from_numpy(np.array(personal.array("features/f_f.npy")))).numpy()
    assert np.allclose(personal.array("features/delta_w.npy"), expected, atol=1e-5)
    assert np.array_equal(personal.array("features/maps_09.npy"), maps_before)
    with pytest.raises(Exception, match="stale"):
        load_avatar(str(avatar.path), model_id=general_id)

    # Personalised again per channel, the general model serves it once more; a model of its own after
    # that drops the per-channel shift (its weights carry the whole shift).
    quick = PersonalizeConfig(epochs=1, batch=2, hold_out_seconds=1.0)
    again = personalize(Avatar.load(avatar.path), None, expert, quick, log=False)
    assert again["model_id"] == general_id and own_weights(str(avatar.path)) is None
    assert load_avatar(str(avatar.path), model_id=general_id).channel_shift().any()
    full = personalize(Avatar.load(avatar.path), None, expert, replace(quick, delta_p="full"), log=False)
    assert not load_avatar(str(avatar.path), model_id=full["model_id"]).channel_shift().any()

    short = prepare_avatar(source, "short", root=tmp_path, max_seconds=2.2, show_progress=False)
    with pytest.raises(PersonalizeError, match="at least 2 s"):
        personalize(Avatar.load(short.path), cache, expert, config, log=False)


def test_clips_joined_into_a_template_keep_every_frame_and_their_own_audio(shared_data: Path, tmp_path: Path) -> None:
    import av

    from lipstream.realtime.audio_in import read_audio_file
    from lipstream.training.template import join_clips, main

    sources = [s.path for s in grid_sources(shared_data / "grid_s1") if s.split == "train"][:2]
    seconds = join_clips(sources, tmp_path / "joined.mp4")

    with av.open(str(tmp_path / "joined.mp4")) as joined:
        assert sum(1 for _ in joined.decode(video=0)) == 150 and seconds == pytest.approx(6.0)
    audio = read_audio_file(str(tmp_path / "joined.mp4"))
    second = read_audio_file(str(sources[1]))[: 16_000 * 2]
    # The second clip's speech starts 3 s in: find it by cross-correlation within +-0.1 s.
    scores = np.correlate(audio[48_000 - 1600 : 48_000 + 1600 + len(second)], second, mode="valid")
    assert abs(int(np.argmax(scores)) - 1600) <= 1024  # AAC priming: at most one frame of delay
    assert scores.max() > 0.8 * float(np.dot(second, second))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "none.mp4")])


def test_personalisation_without_replay_stops_on_ctrl_c_and_resumes_to_the_same_weights(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh install has no training cache: the template alone trains. Ctrl-C writes a checkpoint,
    and the resumed run ends where an uninterrupted one does, to the same weights."""
    import os
    import signal

    from lipstream.avatars import Avatar
    from lipstream.avatars.prepare import prepare_avatar
    from lipstream.models.weights import WEIGHTS_DIR
    from lipstream.realtime.runtime import load_avatar
    from lipstream.training import personalize as module

    source = grid_sources(shared_data / "grid_s1")[-1].path
    expert = WEIGHTS_DIR.parent / "experts" / "syncnet-seed0.pt"
    config = module.PersonalizeConfig(epochs=1, batch=2, lr=1e-3, hold_out_seconds=0.4)
    whole_path = prepare_avatar(source, "whole", root=tmp_path, max_seconds=3.2, show_progress=False).path
    shutil.copytree(whole_path, tmp_path / "stopped")  # the same avatar twice, prepared once
    avatars = [Avatar.load(whole_path), Avatar.load(tmp_path / "stopped")]
    whole = module.personalize(avatars[0], None, expert, config, log=False)

    original = module.Personalizer.train_step

    def step_then_ctrl_c(self: module.Personalizer, batch: dict) -> dict:
        losses = original(self, batch)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
        return losses

    with monkeypatch.context() as patch:
        patch.setattr(module.Personalizer, "train_step", step_then_ctrl_c)
        with pytest.raises(module.Interrupted) as stopped:
            module.personalize(avatars[1], None, expert, config, log=False)
    assert stopped.value.step == 3 and stopped.value.checkpoint.is_file()
    resumed = module.personalize(avatars[1], None, expert, config, log=False, resume=True)

    assert whole["replay"] == resumed["replay"] == "none" and resumed["steps"] == whole["steps"] > 3
    assert not stopped.value.checkpoint.exists()
    load_avatar(str(avatars[1].path), model_id=resumed["model_id"])  # its files all listed and present
    first, second = (torch.load(a.path / "personal" / "rt-channels.pt", weights_only=True) for a in avatars)
    assert torch.equal(first["delta_p"], second["delta_p"])
    assert all(torch.equal(first["delta_w"][k], second["delta_w"][k]) for k in first["delta_w"])


def test_the_motion_term_measures_what_the_audio_changes_not_the_look(shared_data: Path, tmp_path: Path) -> None:
    """Personalising with lambda_motion compares what the audio changes in the lips (render minus the
    render in silence) with the general model's: a new colour leaves it at zero, a new response to the
    styles does not; the term is logged and reported."""
    from lipstream.avatars import Avatar
    from lipstream.avatars.prepare import prepare_avatar
    from lipstream.models.weights import WEIGHTS_DIR
    from lipstream.training import personalize as module

    source = grid_sources(shared_data / "grid_s1")[-1].path
    avatar = Avatar.load(prepare_avatar(source, "motion", root=tmp_path, max_seconds=3.2, show_progress=False).path)
    expert = WEIGHTS_DIR.parent / "experts" / "syncnet-seed0.pt"
    config = module.PersonalizeConfig(epochs=1, batch=2, lambda_motion=30.0)
    trainer = module.Personalizer("rt", None, expert, config)
    batch = next(iter(module._batches(module.template_clip(avatar), [], config, steps=1)))

    def motion_l1() -> float:
        with torch.no_grad():
            trainer.generate(batch)
            return float(trainer.penalties()["motion_l1"])

    assert motion_l1() < 1e-6  # personalisation starts from the general model
    generator = dict(trainer.model.generator.named_parameters())
    with torch.no_grad():
        generator["to_rgbs.4.bias"] += 0.3  # another colour, the same motion
    assert motion_l1() < 1e-5
    with torch.no_grad():
        generator["convs.9.conv.modulation.affine.weight"] *= 1.5  # another response to the styles
    assert motion_l1() > 1e-3

    summary = module.personalize(avatar, None, expert, config, log=False)
    assert summary["lambda_motion"] == 30.0
    history = (avatar.path / module.PERSONAL_DIR / module.LOG).read_text().splitlines()
    assert history and all("motion_l1" in json.loads(line) for line in history)


def test_the_lips_discriminator_sees_the_mouth_and_trains_with_feature_matching(cache: Path, tmp_path: Path) -> None:
    from lipstream.models.config import get_profile
    from lipstream.models.discriminator import MouthDiscriminator, mouth_crop
    from lipstream.training.generator_train import GeneratorTrainConfig, GeneratorTrainer

    cfg = get_profile("rt")
    region = torch.zeros(2, 3, cfg.region_rows, cfg.face_size)
    region[:, :, 20, 64] = 1.0  # a point between the lips of the canonical crop (row 84 of 128)
    mouth = mouth_crop(region, cfg)
    assert mouth.shape == (2, 3, 40, 64) and mouth.sum() == 6
    logits, features = MouthDiscriminator()(mouth)
    assert logits.shape == (2, 1, 5, 8) and len(features) == 3

    config = GeneratorTrainConfig(steps=2, batch=2, gan_from_step=0, r1_every=1, lambda_mouth_adv=1.0, lambda_fm=10.0)
    trainer = GeneratorTrainer(cache, tmp_path / "run", config)
    before = {k: v.clone() for k, v in trainer.mouth_disc.state_dict().items()}
    assert trainer.run(log=False)["step"] == 2
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][-1]
    assert {"g_mouth", "fm", "d_mouth", "r1_mouth"} <= set(logged) and logged["fm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.mouth_disc.state_dict().items())
    resumed = GeneratorTrainer(cache, tmp_path / "run", config, resume=True)
    state = trainer.mouth_disc.state_dict()
    assert all(torch.equal(state[k], v) for k, v in resumed.mouth_disc.state_dict().items())


def test_per_channel_personalisation_is_served_by_the_general_model(shared_data: Path, tmp_path: Path) -> None:
    """--delta-p channels: the generator's shift is the layers' and style affines' biases alone, stored
    with the avatar as a per-sample input of the general model's frame graph (features/delta_p.npy)
    beside its own dW head (personal/rt-channels.pt, under 2 MB). The avatar keeps the general model's
    id, and the general model fed its shift renders what the tuned model rendered."""
    from lipstream.avatars import Avatar
    from lipstream.avatars.prepare import prepare_avatar
    from lipstream.models.personalization import ChannelPersonalization
    from lipstream.models.weights import WEIGHTS_DIR, load_stylesync
    from lipstream.realtime.compositor import AvatarAssets
    from lipstream.training import personalize as module

    source = grid_sources(shared_data / "grid_s1")[-1].path
    expert = WEIGHTS_DIR.parent / "experts" / "syncnet-seed0.pt"
    avatar = Avatar.load(prepare_avatar(source, "channels", root=tmp_path, max_seconds=2.4, show_progress=False).path)
    config = module.PersonalizeConfig(epochs=1, batch=2, lr=1e-2, delta_p="channels")
    summary = module.personalize(avatar, None, expert, config, log=False)
    assert summary["delta_p"] == "channels" and summary["delta_p_values"] == 3919
    general, general_id = load_stylesync("rt")
    personal = Avatar.load(avatar.path, model_id=general_id)  # the general model serves it
    assert personal.manifest.weights is None and summary["model_id"] == general_id
    params_file = avatar.path / "personal" / "rt-channels.pt"
    assert summary["personal_bytes"] == params_file.stat().st_size < 2_000_000
    shift = personal.channel_shift()
    assert shift.shape == (3919,) and np.abs(shift).max() > 0
    params = ChannelPersonalization.load(params_file, general.cfg)
    np.testing.assert_allclose(shift, params.delta_p.numpy(), atol=1e-6)
    # The head's dW is cached per frame, and differs from the general model's zeros.
    head = params.head(general.cfg)
    f_f = torch.from_numpy(np.array(personal.array("features/f_f.npy")[:4]))
    with torch.no_grad():
        np.testing.assert_allclose(personal.array("features/delta_w.npy")[:4], head(f_f).numpy(), atol=1e-5)
    assert np.abs(personal.array("features/delta_w.npy")[:4]).max() > 0
    # The server's batches carry it for every frame of this avatar (zeros for a general one).
    np.testing.assert_array_equal(AvatarAssets(personal).features(3)["delta_p"], shift)
    with pytest.raises(module.PersonalizeError, match="unknown delta_p 'rank'"):
        module.personalize(avatar, None, expert, module.PersonalizeConfig(delta_p="rank"), log=False)
