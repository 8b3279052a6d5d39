"""Run an iterator in a background thread, a few items ahead of its consumer.

Decoding (PyAV) and inference (TensorFlow) both release the GIL, so decoding the
next clips while the model embeds the current batch overlaps the two. The queue
is bounded, so memory stays at `depth` items; exceptions reach the consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """Yields `items` in order, produced up to `depth` ahead by a daemon thread (depth 0: inline)."""
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who re-raises it
            put(_Raised(e))

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()  # the consumer stopped early or finished: release the producer
        worker.join(timeout=5)
