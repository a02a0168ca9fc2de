"""Avatar preparation on real clips: manifest, masks, paste-back, cache validation, and every error."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from lipstream.avatars import Avatar, AvatarCacheError, SourceError
from lipstream.avatars.align import MATCH_BAND, invert, match_colour, mouth_opening, paste_back, transform_points
from lipstream.avatars.av_sync import NATURAL_LAGS, measure_audio_sync, shift_audio
from lipstream.avatars.default import built_in_avatar, default_avatar, photo_source
from lipstream.avatars.landmarks import LIP_POINTS
from lipstream.avatars.manifest import Manifest
from lipstream.avatars.masks import crop_landmarks, points_inside
from lipstream.avatars.prepare import prepare_avatar
from lipstream.dsp import melspectrogram, read_wav
from lipstream.models.weights import load_stylesync
from lipstream.paths import InvalidNameError

LIPS = list(LIP_POINTS)  # numpy fancy indexing wants a list


def prepare(source: Path, root: Path, name: str, **kwargs: object) -> Avatar:
    result = prepare_avatar(source, name, root=root, show_progress=False, **kwargs)
    return Avatar.load(result.path)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("avatars")


@pytest.fixture(scope="module")
def anchor(shared_data: Path, root: Path) -> Avatar:
    return prepare(shared_data / "talking" / "dfrf_cnn_anchor_71s.mp4", root, "anchor", max_seconds=1.2)


@pytest.fixture(scope="module")
def grid(shared_data: Path, root: Path) -> Avatar:
    clip = sorted((shared_data / "grid_s1" / "video").glob("*.mp4"))[0]
    return prepare(clip, root, "grid", max_seconds=1.0, mask="pose")


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def face_box_psnr(avatar: Avatar, index: int, pasted: np.ndarray) -> float:
    frame = cv2.imread(str(avatar.frame_path(index)))[..., ::-1]
    size = avatar.manifest.crop_size
    corners = transform_points(
        np.array([[0, 0], [size, size], [0, size], [size, 0]], float), invert(avatar.array("transforms.npy")[index])
    )
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    error = (pasted[y0:y1, x0:x1].astype(float) - frame[y0:y1, x0:x1]) ** 2
    return float(10 * np.log10(255**2 / max(error.mean(), 1e-10)))


def test_manifest_describes_the_cache(anchor: Avatar) -> None:
    m = anchor.manifest
    _, model_id = load_stylesync("rt")
    assert m.format_version == 2 and m.profile == "rt" and m.model_id == model_id
    assert (m.fps, m.frame_count, m.frame_size, m.crop_size) == (25, 30, (512, 512), 128)
    assert m.extra["interpolated_frames"] == 0 and m.extra["detected_frames"] == 30
    assert Manifest.from_json(json.loads((anchor.path / "manifest.json").read_text())) == m
    assert Manifest.from_json(m.to_json()) == m  # what it writes, it reads back the same
    assert len(list((anchor.path / "frames").iterdir())) == 30 and not (anchor.path / "idle").exists()
    assert set(m.files) >= {"crops.npy", "masks.npy", "transforms.npy", "audio.wav", "features/f_f.npy"}
    maps = anchor.feature_maps()
    assert [tuple(x.shape[1:]) for x in maps] == load_stylesync("rt")[0].cfg.face_map_shapes()
    assert all(x.shape[0] == 30 and x.dtype == np.float16 for x in maps)
    assert np.count_nonzero(anchor.array("features/delta_w.npy")) == 0


def test_smoothing_reduces_crop_jitter(anchor: Avatar) -> None:
    jitter = anchor.manifest.extra["crop_jitter"]
    assert jitter["smoothed"]["speed"] < jitter["raw"]["speed"]
    assert jitter["smoothed"]["shake"] < 0.5 * jitter["raw"]["shake"]


def test_template_audio_is_kept(anchor: Avatar) -> None:
    with wave.open(str(anchor.path / "audio.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getnframes()) == (16_000, 1, 30 * 640)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert np.abs(samples).max() > 1000, "the anchor speaks in the first second"


def test_the_idle_loop_plays_the_stillest_stretch_of_a_talking_template() -> None:
    from lipstream.avatars.prepare import ping_pong, quiet_stretch

    rng = np.random.default_rng(0)
    opening = 0.3 + 0.1 * rng.standard_normal(500)  # talking
    opening[300:420] = 0.02 + 0.005 * rng.standard_normal(120)  # a pause with the mouth shut
    first = quiet_stretch(opening, 100)
    assert 300 <= first <= 320
    assert list(ping_pong(4, first)) == [first, first + 1, first + 2, first + 3, first + 2, first + 1]
    assert quiet_stretch(opening[:50], 100) == 0  # a template shorter than the stretch: all of it


def test_idle_loop_never_jumps(anchor: Avatar) -> None:
    loop = anchor.array("idle_loop.npy")
    steps = np.abs(np.diff(np.concatenate([loop, loop[:1]])))
    assert set(loop) == set(range(30)) and steps.max() == 1


@pytest.mark.parametrize("fixture", ["anchor", "grid"])
def test_the_mouth_lies_inside_the_mask(fixture: str, request: pytest.FixtureRequest) -> None:
    avatar: Avatar = request.getfixturevalue(fixture)
    landmarks, transforms, masks = (avatar.array(f) for f in ("landmarks.npy", "transforms.npy", "masks.npy"))
    for i in range(avatar.frame_count):
        lips = crop_landmarks(landmarks[i], transforms[i])[LIPS]
        assert points_inside(masks[i].astype(np.float32), lips).all(), f"frame {i}: lips outside the mask"


@pytest.mark.parametrize("fixture", ["anchor", "grid"])
def test_pasting_the_untouched_crop_back_reproduces_the_frame(fixture: str, request: pytest.FixtureRequest) -> None:
    avatar: Avatar = request.getfixturevalue(fixture)
    crops, transforms = avatar.array("crops.npy"), avatar.array("transforms.npy")
    for i in (0, avatar.frame_count // 2, avatar.frame_count - 1):
        frame = cv2.imread(str(avatar.frame_path(i)))[..., ::-1]
        weight = avatar.array("paste_masks.npy")[i] / 255.0
        pasted = paste_back(frame, crops[i], transforms[i], weight, template_crop=crops[i])
        assert face_box_psnr(avatar, i, pasted) >= 40.0


def test_plain_paste_is_geometrically_exact_when_the_face_fits_the_crop(grid: Avatar) -> None:
    """GRID's face is about crop-sized, so even the crop's own pixels put back match the frame."""
    i = 10
    frame = cv2.imread(str(grid.frame_path(i)))[..., ::-1]
    weight = grid.array("paste_masks.npy")[i] / 255.0
    pasted = paste_back(frame, grid.array("crops.npy")[i], grid.array("transforms.npy")[i], weight)
    assert face_box_psnr(grid, i, pasted) >= 40.0


def test_a_changed_mouth_lands_on_the_lips_and_nowhere_else(anchor: Avatar) -> None:
    i = 5
    frame = cv2.imread(str(anchor.frame_path(i)))[..., ::-1]
    crop, transform = anchor.array("crops.npy")[i], anchor.array("transforms.npy")[i]
    weight = anchor.array("paste_masks.npy")[i] / 255.0
    darker = crop.astype(np.float32) * (1 - 0.6 * anchor.array("masks.npy")[i][..., None])
    pasted = paste_back(frame, darker, transform, weight, template_crop=crop).astype(float)
    landmarks = anchor.array("landmarks.npy")[i]
    at = lambda points: np.array([pasted[round(y), round(x)] - frame[round(y), round(x)] for x, y in points])  # noqa: E731
    assert at(landmarks[LIPS]).mean() < -30, "the lips got darker"
    assert np.abs(at(landmarks[[33, 133, 362, 263, 10]])).max() < 2, "eyes and forehead untouched"


def test_a_colour_cast_of_the_generated_region_is_matched_away_and_the_mouth_kept(anchor: Avatar) -> None:
    i, rows = 5, 64
    crop = anchor.array("crops.npy")[i].astype(np.float32)
    weight = anchor.array("paste_masks.npy")[i] / 255.0
    lips = crop_landmarks(anchor.array("landmarks.npy")[i], anchor.array("transforms.npy")[i])[list(LIP_POINTS)]
    centre, radius = lips.mean(axis=0), 0.6 * np.ptp(lips[:, 0])
    y, x = np.mgrid[0:128, 0:128] + 0.5
    mouth = np.hypot(x - centre[0], y - centre[1]) < radius
    generated = crop.copy()
    generated[-rows:] += np.array([18.0, -12.0, 6.0])  # a generator that renders the skin tinted
    generated[mouth] *= 0.7  # and a mouth of its own
    matched = match_colour(generated, crop, weight, rows)
    band = (weight > MATCH_BAND[0]) & (weight < MATCH_BAND[1])
    band[:-rows] = False
    before = np.abs(generated[band] - crop[band]).mean()
    after = np.abs(matched[band] - crop[band]).mean()
    assert before > 10 and after < 0.25 * before, (before, after)
    assert np.array_equal(matched[:-rows], generated[:-rows]), "rows above the region untouched"
    # The mouth's own shading survives: it is still darker than the skin around it.
    centre = mouth & ~band
    assert matched[centre].mean() < matched[band].mean() - 10


def test_a_30fps_clip_becomes_25fps(shared_data: Path, root: Path) -> None:
    avatar = prepare(shared_data / "talking" / "hdtf_RD_Radio10_short.mp4", root, "radio")
    assert avatar.frame_count == pytest.approx(62 / 29.97 * 25, abs=1)


def test_a_sound_track_shifted_against_the_picture_is_reported_with_the_offset_that_mends_it(
    shared_data: Path, tmp_path: Path
) -> None:
    """Five GRID s1 sentences joined in step, prepared with their sound 160 ms early and 160 ms late:
    prepare calls the audio shifted and suggests an offset that undoes it; the same frames with the sound
    put back are in step."""
    from lipstream.training.dataset import grid_sources
    from lipstream.training.template import join_clips

    sources = [s.path for s in grid_sources(shared_data / "grid_s1") if s.split == "test"][:5]
    join_clips(sources, tmp_path / "joined.mp4")
    for offset, lags in ((-160, range(-6, -2)), (160, range(4, 8))):
        result = prepare_avatar(
            tmp_path / "joined.mp4",
            "shifted",
            root=tmp_path,
            max_seconds=15,
            audio_offset_ms=offset,
            show_progress=False,
        )
        found = result.audio_sync
        assert found is not None and found.suspect and found.lag_frames in lags, (offset, found)
        assert abs(found.suggested_offset_ms) <= 80 and "--audio-offset" in found.message()  # 0: as joined
        assert result.manifest.extra["audio_sync"] == found.as_dict()
        assert found.as_dict()["audio_offset_ms"] == offset

        samples, rate = read_wav(result.path / "audio.wav")
        put_back = shift_audio(samples, -offset * rate // 1000)
        opening = mouth_opening(np.load(result.path / "landmarks.npy"))
        in_step = measure_audio_sync(opening, melspectrogram(put_back))
        assert in_step is not None and not in_step.suspect, (offset, in_step)
        assert NATURAL_LAGS[0] <= in_step.lag_frames <= NATURAL_LAGS[1] and in_step.r > found.r_natural
        assert in_step.message().startswith("in step")


def test_shifting_the_sound_keeps_its_length() -> None:
    samples = np.arange(1, 11, dtype=np.float32)
    assert shift_audio(samples, 3).tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert shift_audio(samples, -3).tolist() == [4, 5, 6, 7, 8, 9, 10, 0, 0, 0]
    assert shift_audio(samples, 25).tolist() == shift_audio(samples, -25).tolist() == [0] * 10


def test_a_photo_makes_a_one_frame_avatar(root: Path) -> None:
    avatar = prepare(photo_source(), root, "photo", mask="pose")
    assert avatar.frame_count == 1 and list(avatar.array("idle_loop.npy")) == [0]
    assert avatar.manifest.source.kind == "image"


def test_the_default_avatar_is_a_personalised_video_prepared_once(tmp_path: Path) -> None:
    """The default: 9 s of GRID s4 with her shipped personal parameters (dW head and per-channel dP),
    served by the general model; the photo stays built in. Each is prepared once, and again when what
    it was made from changes."""
    first = default_avatar(root=tmp_path)
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    assert first.manifest.source.kind == "video" and first.manifest.source.has_audio
    assert first.frame_count == 225 and first.manifest.weights is None
    personal = first.manifest.extra["personalized"]
    assert personal["base_model_id"] == first.manifest.model_id == load_stylesync("rt")[1]
    assert np.abs(first.channel_shift()).max() > 0 and np.abs(first.array("features/delta_w.npy")).max() > 0
    second = default_avatar(root=tmp_path)
    assert second.path == first.path and (second.path / "manifest.json").stat().st_mtime_ns == stamp

    photo = built_in_avatar("photo", root=tmp_path)
    assert photo.frame_count == 1 and photo.manifest.source.kind == "image" and not photo.channel_shift().any()
    with pytest.raises(AvatarCacheError, match="no built-in avatar 'tom'"):
        built_in_avatar("tom", root=tmp_path)
    manifest = json.loads((first.path / "manifest.json").read_text())
    manifest["built_in"]["params_sha256"] = "0" * 64  # as if other parameters had shipped
    (first.path / "manifest.json").write_text(json.dumps(manifest))
    again = default_avatar(root=tmp_path)
    assert again.manifest.extra["built_in"] == first.manifest.extra["built_in"]
    assert (again.path / "manifest.json").stat().st_mtime_ns != stamp


def corrupt_copy(avatar: Avatar, tmp_path: Path) -> Path:
    copy = tmp_path / avatar.name
    shutil.copytree(avatar.path, copy)
    return copy


def test_a_corrupted_cache_file_is_refused(anchor: Avatar, tmp_path: Path) -> None:
    copy = corrupt_copy(anchor, tmp_path)
    data = bytearray((copy / "crops.npy").read_bytes())
    data[-100] ^= 0xFF
    (copy / "crops.npy").write_bytes(bytes(data))
    with pytest.raises(AvatarCacheError, match=r"crops\.npy does not match its checksum.*lipstream prepare .*anchor"):
        Avatar.load(copy)


def test_a_missing_file_a_stale_model_and_an_old_format_are_refused(anchor: Avatar, tmp_path: Path) -> None:
    copy = corrupt_copy(anchor, tmp_path)
    with pytest.raises(AvatarCacheError, match="stale; rebuild it with: lipstream prepare"):
        Avatar.load(copy, model_id="rt-trained-0000")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest | {"format_version": 0}))
    with pytest.raises(AvatarCacheError, match="format version 0"):
        Avatar.load(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest | {"frame_count": "30"}))
    with pytest.raises(AvatarCacheError, match=r"frame_count should be int, not '30'\); rebuild it with"):
        Avatar.load(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest | {"source": manifest["source"] | {"has_audio": 1}}))
    with pytest.raises(AvatarCacheError, match=r"source\.has_audio should be bool"):
        Avatar.load(copy)
    (copy / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "reference_frame"}))
    with pytest.raises(AvatarCacheError, match="reference_frame is missing"):
        Avatar.load(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "frames" / "000003.jpg").unlink()
    with pytest.raises(AvatarCacheError, match=r"frames/000003\.jpg is missing"):
        Avatar.load(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(AvatarCacheError, match=r"manifest\.json is corrupt"):
        Avatar.load(copy)
    with pytest.raises(AvatarCacheError, match="not a prepared avatar"):
        Avatar.load(tmp_path / "nothing")


def test_a_failed_prepare_leaves_nothing_and_keeps_the_old_avatar(
    anchor: Avatar, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lipstream.avatars.prepare as prepare_module

    def broken(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(prepare_module, "write_wav", broken)
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(OSError, match="disk full"):
        prepare_avatar(anchor.manifest.source.path, "anchor", root=root, max_seconds=0.4, show_progress=False)
    assert sorted(p.name for p in root.iterdir()) == before, "no partial folder is left behind"
    Avatar.load(anchor.path)  # the earlier avatar is intact


def test_frames_without_a_face_are_interpolated_and_counted(shared_data: Path, tmp_path: Path) -> None:
    clip = sorted((shared_data / "grid_s1" / "video").glob("*.mp4"))[1]
    with av.open(str(clip)) as video:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(20), video.decode(video=0), strict=False)]
    for i in (8, 9, 10):
        frames[i] = np.zeros_like(frames[i])
    avatar = prepare(write_video(tmp_path / "gaps.mp4", frames), tmp_path, "gaps")
    assert avatar.manifest.extra["interpolated_frames"] == 3


def errors_for(tmp_path: Path) -> list[tuple[Path, str, dict]]:
    astronaut = cv2.imread(str(photo_source()))
    cases = []
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases.append((tmp_path / "empty.mp4", "the file is empty", {}))
    (tmp_path / "garbage.mp4").write_bytes(bytes(range(256)) * 40)
    cases.append((tmp_path / "garbage.mp4", "not a video or image that FFmpeg can read", {}))
    cases.append((tmp_path / "missing.mp4", "no such file", {}))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    cases.append((tmp_path / "broken.png", "not an image OpenCV can read", {}))
    blank = [np.full((128, 128, 3), 90, np.uint8)] * 10
    cases.append((write_video(tmp_path / "blank.mp4", blank), "no face found in any of the 10 frames", {}))
    cv2.imwrite(str(tmp_path / "two.png"), np.concatenate([astronaut, astronaut], axis=1))
    cases.append((tmp_path / "two.png", "frame 0: 2 faces of similar size", {}))
    cv2.imwrite(str(tmp_path / "small.png"), cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA))
    cases.append((tmp_path / "small.png", "frame 0: the face is too small for the hq profile", {"profile": "hq"}))
    return cases


def test_bad_sources_get_clear_errors(tmp_path: Path) -> None:
    for source, message, kwargs in errors_for(tmp_path):
        with pytest.raises(SourceError, match=message):
            prepare_avatar(source, "bad", root=tmp_path / "out", show_progress=False, **kwargs)
        assert not (tmp_path / "out" / "bad").exists()


def test_a_long_stretch_without_a_face_is_an_error(shared_data: Path, tmp_path: Path) -> None:
    clip = sorted((shared_data / "grid_s1" / "video").glob("*.mp4"))[2]
    with av.open(str(clip)) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)][:40]
    frames[5:36] = [np.zeros_like(frames[0])] * 31
    with pytest.raises(SourceError, match=r"no face in frames 5-35 \(1\.2 s\)"):
        prepare_avatar(write_video(tmp_path / "gap.mp4", frames), "gap", root=tmp_path, show_progress=False)


def test_avatar_names_cannot_escape_the_folder(tmp_path: Path) -> None:
    for name in ("../evil", "a/b", ".hidden", ""):
        with pytest.raises(InvalidNameError, match="not allowed"):
            prepare_avatar(photo_source(), name, root=tmp_path, show_progress=False)
