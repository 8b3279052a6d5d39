"""Narration: timed captions read from .vtt, .srt and .json files or a table, cleaned of what
captioning tools add (styling, YouTube's rolling repeats), ready to align with clips.

Knows nothing of Beam or TensorFlow; remote files are read through storage.objects.
"""

from captions.parse import Caption, CaptionsError, caption_kind, parse_captions

__all__ = ["Caption", "CaptionsError", "caption_kind", "parse_captions"]
