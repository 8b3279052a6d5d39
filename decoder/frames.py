"""Crop, scale and convert decoded frames to RGB in one FFmpeg filter graph, only for frames that are kept."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import numpy as np

from decoder.options import DecodeOptions


class FrameConverter:
    """Crop, scale and convert to RGB in one FFmpeg filter graph; rebuilt if the frame geometry changes."""

    def __init__(self, options: DecodeOptions, rotation: int):
        self._options = options
        self._k = (rotation // 90) % 4  # np.rot90 turns counter-clockwise, as the display matrix does
        self._key: tuple | None = None
        self._graph: Any = None

    def _filters(self, width: int, height: int) -> list[tuple[str, str]]:
        size = self._options.size
        if self._options.crop == "center":
            side = min(width, height)
            return [("crop", f"{side}:{side}"), ("scale", f"{size}:{size}")]
        if self._options.crop == "resize":
            return [("scale", f"{size}:{size}")]
        short = min(width, height)  # short_side: scale the short side to `size`, keep aspect, crop the centre
        w = max(size, round(width * size / short))
        h = max(size, round(height * size / short))
        return [("scale", f"{w}:{h}"), ("crop", f"{size}:{size}")]

    def _build(self, frame: av.VideoFrame) -> None:
        graph = av.filter.Graph()
        node = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name, time_base=Fraction(1, 1000))
        for name, args in [*self._filters(frame.width, frame.height), ("format", "rgb24")]:
            nxt = graph.add(name, args)
            node.link_to(nxt)
            node = nxt
        node.link_to(graph.add("buffersink"))
        graph.configure()
        self._graph = graph
        self._key = (frame.width, frame.height, frame.format.name)

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self._key != (frame.width, frame.height, frame.format.name):
            self._build(frame)
        frame.pts = None  # the graph's own timing is irrelevant; keeps the buffer source from complaining
        self._graph.vpush(frame)
        rgb = self._graph.vpull().to_ndarray(format="rgb24")
        if self._k:
            rgb = np.ascontiguousarray(np.rot90(rgb, self._k))
        return rgb
