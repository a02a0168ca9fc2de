"""Drive a running lipstream server from a voice agent's process (see client.py and pipecat.py)."""

from .client import AvatarConnection, AvatarFrame, LipstreamError

__all__ = ["AvatarConnection", "AvatarFrame", "LipstreamError"]
