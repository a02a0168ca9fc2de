"""The settings of the training and evaluation jobs, with their defaults: one home for the jobs and for
the CLI that offers them (this module imports no torch, so `lipstream --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lipstream.avatars.options import REFERENCE_PERCENTILE
from lipstream.dsp.voice import DEFAULT_WARP
from lipstream.realtime.settings import KEEP_TEMPLATE, VOICE_NORM

SYNC_FRAMES = 5  # frames per SyncNet window and per generator sample (0.2 s at 25 fps)


@dataclass
class SyncTrainConfig:
    seed: int = 0
    steps: int = 20_000
    batch: int = 32
    lr: float = 3e-4
    temperature: float = 0.1
    checkpoint_minutes: float = 5.0
    validate_every: int = 1000
    max_minutes: float = 120.0  # one chunk; resume for more


@dataclass
class GeneratorTrainConfig:
    profile: str = "rt"
    seed: int = 0
    steps: int = 200_000
    batch: int = 4  # samples of five consecutive frames: 20 generated frames per step
    lr: float = 1e-3
    d_lr: float = 1e-3
    lambda_rec: float = 10.0
    lambda_perceptual: float = 10.0  # scales 1 - MS-SSIM like L1: both are part of L_rec
    lambda_sync: float = 1.0
    lambda_adv: float = 1.0
    lambda_mouth_adv: float = 0.0  # the lips' patch discriminator; 0: not trained at all
    lambda_fm: float = 0.0  # feature matching in the lips' discriminator (needs lambda_mouth_adv > 0)
    colour_cast: bool = True  # augmentation: per-channel colour cast, or only a shared gain and offset
    # voice augmentation (loaders.GeneratorSamples): formants warped by up to this factor either way
    # (1: the clips' own voices), and the level moved by up to this many mel units (1 = 12.5 dB)
    voice_factor: float = 1.0
    voice_level: float = 0.0
    # what learns: "all", or "audio": the audio encoder and the mapping alone, the face encoder and the
    # generator frozen (a fine-tune of how speech becomes styles that cannot change how a mouth is drawn)
    trainable: str = "all"
    perceptual: str = "ms-ssim"  # or "none" (the ablation)
    gan_from_step: int = 3000
    adv_stride: int = SYNC_FRAMES  # the discriminator sees every n-th generated frame (it costs 2x G)
    sync_from_step: int = 0
    r1_gamma: float = 1.0
    r1_every: int = 16
    grid_share: float = 0.5
    checkpoint_minutes: float = 5.0
    sample_every: int = 500
    validate_every: int = 2000
    validate_clips: int = 4
    max_minutes: float = 120.0  # one chunk; resume for more
    expert: str | None = None  # fp16 SyncNet expert (the training one); None: no sync loss
    init: str | None = None  # fp16 StyleSync weights to start from (a fine-tune); None: the seeded init


@dataclass
class UpsamplerTrainConfig:
    seed: int = 0
    steps: int = 20_000
    batch: int = 8
    lr: float = 1e-3
    width: int = 32
    depth: int = 3
    lambda_l1: float = 1.0
    lambda_ms_ssim: float = 1.0
    lambda_laplacian: float = 1.0
    lambda_adv: float = 0.0  # the lips' patch discriminator; 0: none
    adv_from_step: int = 0
    disc_width: int = 32
    r1_gamma: float = 1.0
    real_share: float = 0.8  # inputs that are the real region scaled down, not the generator's
    blur_share: float = 0.7  # inputs blurred further
    max_crop_scale: float = 1.0  # clips whose crops enlarge the face more than this teach only blur
    weights: str | None = None  # the frozen rt generator that makes its inputs (default: the shipped one)
    init: str | None = None  # upsampler weights to start from (a fine-tune); None: a fresh network
    checkpoint_minutes: float = 5.0
    sample_every: int = 500
    max_minutes: float = 120.0  # one chunk; resume for more


@dataclass
class VoiceDistillConfig:
    """`lipstream train voice` (training/voice_distill.py)."""

    seed: int = 0
    steps: int = 4000
    batch: int = 128  # mel windows per step
    lr: float = 3e-4
    warp: float = 1.25  # formants warped by a factor in [1 / warp, warp]
    lambda_recorded: float = 1.0  # the student's distance from the teacher on the unwarped window
    grid_share: float = 0.5
    checkpoint_minutes: float = 5.0
    sample_every: int = 500
    validate_every: int = 500
    validate_clips: int = 8
    max_minutes: float = 120.0  # one chunk; resume for more
    init: str | None = None  # rt weights: the teacher and the student's start (None: the shipped ones)
    reference: str | None = None  # the learnt voice (None: the shipped rt.voice.json)


# The generator's shift dP (see personalize.py), with the learning rate each was measured best at.
DELTA_P_MODES = ("channels", "full")
DELTA_P_LR = {"channels": 1e-3, "full": 1e-4}


@dataclass
class PersonalizeConfig:
    epochs: float = 5.0  # passes over the template's frames (in samples of five frames)
    batch: int = 4  # template samples per step; as many general ones join them (1:1)
    lr: float | None = None  # None: DELTA_P_LR of the mode
    lambda_p: float = 1e-3  # Eq. 6 penalty on sum dW^2 + sum dP^2
    # L1 on the lips' box between how the audio moves the personalised mouth (its render minus its render
    # in silence) and how it moves the general model's; 0: off (training/personalize.py)
    lambda_motion: float = 0.0
    hold_out_seconds: float = 0.0  # the template's last seconds, kept out (for evaluation)
    seed: int = 0
    # The generator's shift dP: "channels" (per-channel biases, served by the general model beside other
    # avatars) or "full" (every parameter: a model of the avatar's own).
    delta_p: str = "channels"

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DELTA_P_LR.get(self.delta_p, 1e-4)


# `lipstream evaluate` over the training cache's held-out clips (training/evaluate.py)
EVAL_SPLIT = "test"
EVAL_IDENTITY = "grid_s1"  # comma-separated identities, or "held-out"
EVAL_MAX_CLIPS = 10


@dataclass(frozen=True)
class VideoEvalOptions:
    template: str | Path | None = None  # prepared as the avatar instead of the clip
    weights: str | None = None  # rt weights (default: the shipped ones)
    engine: str = "auto"  # the render's engine
    max_seconds: float = 60.0  # of the clip scored
    template_seconds: float = 120.0  # of the template prepared
    reference_percentile: float = REFERENCE_PERCENTILE  # the avatar's reference mouth opening
    hd: str = "auto"  # the hd path (prepare's --hd)
    avatar: str | None = None  # a prepared (e.g. personalised) avatar to score instead of preparing one
    motion_gain: float | None = None  # the render's; None: the server's (realtime.settings.MOTION_GAIN)
    voice_warp: float | None = DEFAULT_WARP  # the render's formant warp (dsp/voice.py); None: by the voice's pitch
    voice_norm: bool = VOICE_NORM  # the render shifts the voice to the learnt voice's mean spectrum (VoiceNorm)
    keep_template: bool = KEEP_TEMPLATE  # the render keeps the template where the audio changes nothing (rest_keep)
    show_progress: bool = True
