"""The errors a user can cause and fix: the CLI prints their message without a traceback.

Their classes live all over the package, some beside torch; they are gathered only when an error
has happened, so that a client command such as `lipstream talk` never imports torch to be ready for one.
"""

from __future__ import annotations


def user_errors() -> tuple[type[Exception], ...]:
    from lipstream.avatars.errors import AvatarError
    from lipstream.dsp.mel import AudioInputError
    from lipstream.dsp.voice import VoiceReferenceError
    from lipstream.dsp.wav import WavFormatError
    from lipstream.engines.base import EngineError, EngineInputError
    from lipstream.export.onnx_export import ExportError
    from lipstream.models.config import UnknownProfileError
    from lipstream.models.weights import WeightsError
    from lipstream.paths import InvalidNameError
    from lipstream.realtime.ice import IceSettingsError
    from lipstream.realtime.security import InvalidTokensError
    from lipstream.realtime.tts import TTSError
    from lipstream.training.dataset import TrainingCacheError
    from lipstream.training.personalize import PersonalizeError

    return (
        AvatarError,
        AudioInputError,
        VoiceReferenceError,
        WavFormatError,
        UnknownProfileError,
        WeightsError,
        InvalidNameError,
        EngineError,
        EngineInputError,
        ExportError,
        InvalidTokensError,
        IceSettingsError,
        PersonalizeError,
        TTSError,
        TrainingCacheError,
    )


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, user_errors())
