"""Which GPU a model copy runs on: one copy per GPU on a machine with several.

Beam's shared models (`model_copies`) load each copy through the same loader, often
in one process, with no index to tell them apart; TensorFlow would put them all on
GPU 0. Each load here claims a free GPU slot with an exclusive lock on a per-slot
file, held for as long as the copy lives, so copy k lands on the k-th GPU whichever
process loads it. With more copies than GPUs the extra copies share, round robin,
with a warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import IO

log = logging.getLogger(__name__)

# Slots are per machine (all SDK processes of a worker share /tmp); the job name is not
# needed: one Dataflow worker VM runs one job.
DEFAULT_LOCK_DIR = os.path.join(tempfile.gettempdir(), "s3d-gpu-slots")


@dataclass
class DeviceClaim:
    """A GPU slot held by one model copy: `device` is a TensorFlow device name such as '/GPU:1'.

    The lock is released when the claim is released or its process ends.
    """

    device: str
    slot: int
    shared: bool = False  # more copies than GPUs: this slot was already taken
    _lock: IO | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def claim_gpu(gpus: list[str], lock_dir: str = DEFAULT_LOCK_DIR) -> DeviceClaim | None:
    """Claims the first GPU of `gpus` (device names) no other live copy holds; None without GPUs.

    Args:
        gpus: logical GPU device names, e.g. ['/device:GPU:0', '/device:GPU:1'].
        lock_dir: where the per-slot lock files live (one machine, all processes).
    """
    if not gpus:
        return None
    os.makedirs(lock_dir, exist_ok=True)
    for slot, device in enumerate(gpus):
        lock = open(os.path.join(lock_dir, f"slot-{slot}.lock"), "a+")  # noqa: SIM115 (held while the copy lives)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return DeviceClaim(device, slot, _lock=lock)
    # Every GPU already holds a copy: share, spreading by process so copies do not pile on GPU 0.
    slot = os.getpid() % len(gpus)
    log.warning(
        "more model copies than GPUs (%d): this copy shares %s; set --model_copies to the GPU count per worker",
        len(gpus), gpus[slot],
    )
    return DeviceClaim(gpus[slot], slot, shared=True)


def visible_gpus() -> list[str]:
    """The logical GPU devices TensorFlow sees in this process."""
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices("GPU")]
