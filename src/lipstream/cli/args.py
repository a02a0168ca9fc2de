"""Argument types that refuse bad values with a line saying what was expected, the options several
commands share, and the defaults read from the library's settings (never restated here)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from typing import Any

from lipstream.dsp.voice import MAX_ALPHA
from lipstream.engines.select import ENGINE_KINDS, ENGINE_VARIANTS
from lipstream.models.config import PROFILES


def defaults(settings: type) -> dict[str, Any]:
    """The defaults of a settings dataclass's fields, by name: the CLI shows and uses the library's own."""
    return {f.name: f.default for f in dataclasses.fields(settings) if f.default is not dataclasses.MISSING}


def _number(kind: Callable[[str], Any], accept: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a whole number of at least 1")
non_negative_int = _number(int, lambda v: v >= 0, "a whole number of at least 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a number above 0")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number of at least 0")
smoothing_factor = _number(float, lambda v: 0 <= v < 1, "a number from 0 (off) to below 1, e.g. 0.3")
percentile = _number(float, lambda v: 0 <= v <= 100, "a percentile from 0 to 100")
share = _number(float, lambda v: 0 <= v <= 1, "a probability from 0 to 1, e.g. 0.3")
port_number = _number(int, lambda v: 1 <= v <= 65535, "a port number from 1 to 65535")
# the voice augmentation's largest warp: at most dsp.voice's (a child's voice from a man's)
voice_factor = _number(float, lambda v: 1 <= v <= MAX_ALPHA, f"a warp factor from 1 (off) to {MAX_ALPHA}, e.g. 1.25")


def instance_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{1,16}", text):
        raise argparse.ArgumentTypeError(f"expected 1 to 16 lower-case letters or digits, got {text!r}")
    return text


def positive_ints(text: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers of at least 1, e.g. 1,2,4."""
    return tuple(positive_int(part.strip()) for part in text.split(","))


def choice_list(what: str, choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """An argument type: a comma-separated list of some of `choices` (engines, variants)."""

    def parse(text: str) -> tuple[str, ...]:
        picked = tuple(part.strip() for part in text.split(","))
        unknown = [p for p in picked if p not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown[0]!r}; expected some of: {', '.join(choices)}")
        return picked

    return parse


engine_kinds = choice_list("engine", ENGINE_KINDS)


MOTION_HELP = (
    "how far the audio moves the mouth from its rest: the styles are extrapolated from those of silence, "
    "w_rest + G (w - w_rest); 1 renders as trained, more opens the mouth wider (%(default)s)"
)
VOICE_HELP = (
    "warp the mel filterbank so that the model hears the speaker's formants where its training voice "
    "(a man's) had them: off (default) hears the voice as it is, auto follows each session's pitch, a "
    "factor such as 1.2 fixes the warp (above 1 lowers a higher voice); it helps a voice saying what the "
    "model was trained on and hurts others (README, Avatars)"
)
SMOOTH_HELP = (
    "average the styles over frames (StyleLipSync's MaLS, causal): weight of the previous frame, 0 (off, "
    "default) to <1; the mouth lags speech by a/(1-a) frames"
)
REFERENCE_HELP = "the reference frame is the one whose mouth opening is at this percentile of the clip's (%(default)s)"
WEIGHTS_HELP = "model weights file (default: the profile's shipped weights)"


def add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default="rt", help="model profile (default rt)")


def runtime_from_options(args: argparse.Namespace, **extra: Any) -> Any:
    """The Runtime that `serve` and `render` build from add_model_options' options (with smoothing and
    the mouth options), `extra` going to build_runtime as it is."""
    from lipstream.realtime.runtime import build_runtime
    from lipstream.realtime.settings import voice_reference

    runtime = build_runtime(
        args.avatar,
        engine=args.engine,
        profile=args.profile,
        weights=args.weights,
        variant=args.engine_variant,
        keep_template=args.keep_template == "on",
        **extra,
    )
    runtime.style_smoothing = args.smooth_styles
    runtime.motion_gain, runtime.voice_warp = args.motion_gain, args.voice_warp
    runtime.voice_norm = voice_reference(args.voice_norm == "on")
    return runtime


def add_model_options(parser: argparse.ArgumentParser, smoothing: bool = True) -> None:
    """--engine, --profile, --weights (and --smooth-styles): how an avatar's model runs."""
    from lipstream.realtime.settings import ENGINE_VARIANT

    parser.add_argument("--engine", choices=ENGINE_KINDS, default="auto", help="inference engine (default auto)")
    parser.add_argument(
        "--engine-variant",
        choices=ENGINE_VARIANTS,
        default=ENGINE_VARIANT,
        help="how ONNX Runtime on the CPU runs the graph: its optimisation level, or auto, the fastest of them "
        "that matches the default's outputs, timed at start-up (%(default)s)",
    )
    add_profile(parser)
    parser.add_argument("--weights", help=WEIGHTS_HELP)
    if smoothing:
        parser.add_argument("--smooth-styles", type=smoothing_factor, default=0.0, metavar="A", help=SMOOTH_HELP)
        add_mouth_options(parser)


def voice_warp(text: str) -> float | None:
    """--voice-warp: auto (None), off (1) or a factor in dsp.voice's range."""
    from lipstream.dsp.voice import VoiceWarpError, check_alpha

    if text in ("auto", "off"):
        return None if text == "auto" else 1.0
    try:
        return check_alpha(float(text))
    except VoiceWarpError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected auto, off or a factor such as 1.2, got {text!r}") from err


def add_mouth_options(parser: argparse.ArgumentParser) -> None:
    """--motion-gain, --voice-warp, --voice-norm and --keep-template: how the audio moves the mouth, and
    what of the generated face is shown."""
    from lipstream.realtime.settings import KEEP_TEMPLATE, MAX_MOTION_GAIN, MOTION_GAIN, VOICE_NORM, VOICE_WARP

    expected = f"a number from 0 (a mouth at rest) to {MAX_MOTION_GAIN:g} (1: as trained)"
    gain = _number(float, lambda v: 0 <= v <= MAX_MOTION_GAIN, expected)
    parser.add_argument("--motion-gain", type=gain, default=MOTION_GAIN, metavar="G", help=MOTION_HELP)
    parser.add_argument("--voice-warp", type=voice_warp, default=VOICE_WARP, metavar="auto|off|F", help=VOICE_HELP)
    _on_off(
        parser,
        "--voice-norm",
        VOICE_NORM,
        "shift each band of the speaker's log-mel so that its mean over their speech is the one of the "
        "voice the model learnt (off: the voice as it is)",
    )
    _on_off(
        parser,
        "--keep-template",
        KEEP_TEMPLATE,
        "take from the model only what the audio changes and keep the template's own pixels elsewhere "
        "(off: the whole generated lower face, as before)",
    )


def _on_off(parser: argparse.ArgumentParser, flag: str, default: bool, help_text: str) -> None:
    """A setting that is on or off (the value stays the string), its default the library's."""
    parser.add_argument(
        flag, choices=("on", "off"), default="on" if default else "off", help=f"{help_text} (%(default)s)"
    )
