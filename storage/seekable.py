"""A read-only file with a position, for readers that fetch bytes on demand (no Beam)."""

from __future__ import annotations

import io


class SeekableReader(io.RawIOBase):
    """Keeps the position and answers seeks; a subclass reads (`readinto`) and says where the end is
    (`_end`, asked only for a seek from the end). A seek before the start lands on the start."""

    mode = "rb"  # Beam's CompressedFile asks its file for one

    def __init__(self):
        super().__init__()
        self._pos = 0

    def _end(self) -> int:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            offset += self._end()
        elif whence == io.SEEK_CUR:
            offset += self._pos
        self._pos = max(0, offset)
        return self._pos
