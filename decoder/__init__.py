"""The video decoder: a video URI -> model-ready clips, with PyAV. Imports neither Beam nor TensorFlow.

    from decoder import ClipReader, DecodeOptions
    for clip in ClipReader("video.mp4", DecodeOptions()):
        clip.frames  # uint8 [32, 224, 224, 3]

Remote URIs are opened through an `opener` the caller passes in (the Beam layer passes
Beam's FileSystems); local paths need none.
"""

from decoder.errors import (
    CorruptStreamError,
    DecoderCrashError,
    LimitExceededError,
    NoFramesError,
    NoVideoStreamError,
    OpenError,
    TooShortError,
    UnsupportedCodecError,
    VideoError,
)
from decoder.options import CROP_MODES, FALLBACK_FPS, TAIL_POLICIES, DecodeOptions, add_decode_arguments
from decoder.reader import Clip, ClipReader, VideoInfo
from decoder.source import Opener

__all__ = [
    "CROP_MODES", "FALLBACK_FPS", "TAIL_POLICIES", "Clip", "ClipReader", "CorruptStreamError", "DecodeOptions",
    "DecoderCrashError",
    "LimitExceededError", "NoFramesError", "NoVideoStreamError", "OpenError", "Opener", "TooShortError",
    "UnsupportedCodecError", "VideoError", "VideoInfo", "add_decode_arguments",
]
