"""Decoding in a process of its own: a crash, a hang or a memory blow-up in FFmpeg costs one video.

FFmpeg runs native code on untrusted bytes, and user-uploaded corpora hold hostile files. A
segfault inside the Beam worker would take the worker down, and Dataflow would retry the bundle
until the job fails; a hang inside a native call never returns to a Python check. So, as Chrome
does with its media decoders, `DecoderProcess` runs `ClipReader` and `read_extent` in a child
process that imports only PyAV and NumPy, and restarts it when it dies:

    with DecoderProcess() as decoder:
        reader = decoder.reader("video.mp4", DecodeOptions())
        for clip in reader:  # the clips ClipReader gives, decoded in the child
            ...
        reader.info

- A death by any signal (or an exit) raises `DecoderCrashError` naming the signal; the clips
  before it were given. The stage is `open` until the stream was probed, then `decode`.
- `max_seconds_per_video` is enforced here by killing the child: the parent counts the time it
  waits for the child's next clip, so a hang in native code is caught as surely as a slow decode.
- `max_decoder_memory_mb` caps the child's address space: a decompression bomb fails alone with
  `LimitExceededError` (limit `max_decoder_memory_mb`), or dies, and either way the next video
  gets a fresh process.
- Frames cross in shared memory: the child writes each clip into one of `slots` buffers (a memfd)
  and sends a few numbers; the parent copies the clip out and frees the slot. The child decodes up
  to `slots` clips ahead of the consumer, which replaces a prefetch thread.
- Remote bytes stay in the parent: it opens the object with its `opener` (credentials, retries
  and the object store's client live there) and answers the child's reads over the pipe, from a
  thread, so the child keeps decoding while the consumer runs the model. The child needs no
  network and no Beam.

Set `S3D_DECODER_FAULT=<kind>[@open]:<text>` to make the child fail on purpose on every video
whose URI contains <text>, after its first clip (`@open`: before the container is opened), as
Chrome's chrome://crash does for a renderer: kinds `segv` (a null read in native code), `abort`,
`hang` (blocks in native code) and `exit`. The tests use it; a user can use it to see what a
crash looks like in a deployment. Several faults are separated by commas.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import errno
import io
import logging
import mmap
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import IO, Any

import numpy as np

from decoder.errors import DecoderCrashError, LimitExceededError, OpenError, VideoError
from decoder.options import DecodeOptions
from decoder.reader import ClipReader, VideoInfo
from decoder.sampling import Clip
from decoder.source import Opener, open_remote
from decoder.split import Extent, read_extent
from storage.paths import is_local
from storage.seekable import SeekableReader

FAULT_ENV = "S3D_DECODER_FAULT"
FAULT_KINDS = ("segv", "abort", "hang", "exit")
START_TIMEOUT_SEC = 60.0  # the child imports PyAV and NumPy, then says it is ready
CANCEL_TIMEOUT_SEC = 10.0  # a consumer that stops early: the child is told, then killed if it does not stop
READ_CHUNK = 1 << 20  # bytes the child asks for at a time when it reads a remote object

log = logging.getLogger(__name__)


class _Died(Exception):  # noqa: N818 - the child is gone; the caller decides what that means
    pass


# ---- the parent's side ------------------------------------------------------------------------


class _Child:
    """One started child: its process, its end of the socket, the shared slots and the reader thread."""

    def __init__(self, slots: int, slot_bytes: int, memory_mb: int):
        self.slots, self.slot_bytes, self.memory_mb = slots, slot_bytes, memory_mb
        self.killed = False  # by us (the budget ran out, or a consumer that stopped would not let go)
        self.fileobj: IO[bytes] | None = None  # the remote object the current job reads
        self.events: queue.Queue = queue.Queue()
        self._send_lock = threading.Lock()
        size = slots * slot_bytes
        self._memfd = _shared_file(size)
        self.buffer = mmap.mmap(self._memfd, size)
        parent_sock, child_sock = socket.socketpair()
        for sock in (parent_sock, child_sock):  # a library's socket.setdefaulttimeout would make them non-blocking
            sock.setblocking(True)
        self.conn = Connection(parent_sock.detach())
        child_fd = child_sock.detach()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "decoder.process", "--fd", str(child_fd), "--shared-fd", str(self._memfd),
                 "--slots", str(slots), "--slot-bytes", str(slot_bytes), "--memory-mb", str(memory_mb),
                 "--parent", str(os.getpid())],
                pass_fds=(child_fd, self._memfd), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(child_fd)
        self._pump = threading.Thread(target=self._read_events, name=f"decoder-{self.proc.pid}", daemon=True)
        self._pump.start()
        try:
            self.next_event(START_TIMEOUT_SEC, "start")
        except (TimeoutError, _Died) as e:
            how = "did not say it was ready" if isinstance(e, TimeoutError) else self.death()[0]
            self.kill()
            self.close()
            raise RuntimeError(f"the decoder process ({sys.executable} -m decoder.process) {how}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: tuple) -> None:
        with self._send_lock:
            self.conn.send(message)

    def _read_events(self) -> None:
        """The child's messages: reads of the remote object are answered here, the rest queued."""
        try:
            while True:
                message = self.conn.recv()
                if message[0] == "read_at":
                    self._serve_read(*message[1:])
                elif message[0] == "size":
                    self._serve_size()
                else:
                    self.events.put(message)
        except (EOFError, OSError):
            self.events.put(("died",))

    def _serve_read(self, pos: int, size: int) -> None:
        try:
            if self.fileobj is None:
                raise OSError("no remote object is open")
            if self.fileobj.tell() != pos:
                self.fileobj.seek(pos)
            reply = ("data", self.fileobj.read(size))
        except Exception as e:  # noqa: BLE001 - any error of the object store's client: the child reports it
            reply = ("read_error", f"{type(e).__name__}: {e}")
        self.send(reply)

    def _serve_size(self) -> None:
        try:
            if self.fileobj is None:
                raise OSError("no remote object is open")
            here = self.fileobj.tell()
            size = self.fileobj.seek(0, io.SEEK_END)
            self.fileobj.seek(here)
            reply = ("data", size)
        except Exception as e:  # noqa: BLE001 - as above
            reply = ("read_error", f"{type(e).__name__}: {e}")
        self.send(reply)

    def next_event(self, timeout: float, doing: str) -> tuple:
        """The child's next message; raises TimeoutError after `timeout` seconds, _Died if it died."""
        try:
            event = self.events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise TimeoutError(f"no word from the decoder process for {timeout:.0f}s ({doing})") from None
        if event[0] == "died":
            self.proc.wait()
            raise _Died()
        return event

    def frames(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        """A copy of the clip in `slot`; the slot is free again after it."""
        count = int(np.prod(shape))
        frames = np.frombuffer(self.buffer, np.uint8, count, slot * self.slot_bytes).reshape(shape).copy()
        try:
            self.send(("free", slot))
        except OSError:  # the child died after filling the slot (EPIPE): the clip is whole, copied above,
            pass  # and the next event tells how the child ended
        return frames

    def death(self) -> tuple[str, int | None]:
        """How the child ended: ('died by signal 11 (SIGSEGV)', 11), or ('exited with status 1', None)."""
        code = self.proc.wait()
        if code < 0:
            number = -code
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = "an unknown signal"
            how = f"died by signal {number} ({name})"
            if number == signal.SIGKILL and not self.killed:
                how += ": killed from outside, as the kernel's out-of-memory killer does"
            return how, number
        return f"exited with status {code}", None

    def kill(self) -> None:
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(("exit",))
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        self.conn.close()
        self._pump.join(timeout=5)
        self.buffer.close()
        os.close(self._memfd)


def _shared_file(size: int) -> int:
    """A file descriptor of `size` bytes of shared memory (a memfd where there is one)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("s3d-decoder-frames")
    else:  # an unlinked temporary file: the page cache shares it just the same
        import tempfile
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd


class DecoderProcess:
    """A restartable decoder process, used for one video at a time (see the module's text).

    Args:
        slots: clips the child may decode ahead of the consumer (at least 1).
    """

    def __init__(self, slots: int = 3):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.starts = 0  # processes started: the first one, then one after each death or kill
        self._child: _Child | None = None

    def __enter__(self) -> DecoderProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first video and after a death)."""
        return self._child.pid if self._child is not None else None

    def close(self) -> None:
        if self._child is not None:
            child, self._child = self._child, None
            child.close()

    def _ready(self, options: DecodeOptions) -> _Child:
        """The running child, started (again) when there is none or it was made for other options."""
        slot_bytes = options.frames_per_clip * options.size * options.size * 3
        child = self._child
        if child is not None and (child.proc.poll() is not None or child.slot_bytes < slot_bytes
                                  or child.memory_mb != options.max_decoder_memory_mb):
            self.close()
            child = None
        if child is None:
            child = self._child = _Child(self.slots, slot_bytes, options.max_decoder_memory_mb)
            self.starts += 1
        return child

    def _lost(self) -> None:
        """The child died or was killed: the next video starts a new one."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.close()

    def reader(self, uri: str, options: DecodeOptions, start_sec: float | None = None, end_sec: float | None = None,
               opener: Opener | None = None, decode_all: bool = False,
               part: tuple[int, int | None, int] | None = None) -> IsolatedReader:
        """A ClipReader of the same arguments that decodes in this process's child."""
        return IsolatedReader(self, uri, options, start_sec, end_sec, opener, decode_all, part)

    def read_extent(self, uri: str, options: DecodeOptions, opener: Opener | None = None) -> Extent:
        """`decoder.split.read_extent` in the child, within `options.max_seconds_per_video`."""
        with self._job(uri, opener, options) as (child, fileobj):
            child.send(("extent", uri, fileobj is not None))
            try:
                event = child.next_event(options.max_seconds_per_video, "reading the header")
            except TimeoutError as e:
                self._lost()
                raise LimitExceededError(uri, "max_seconds_per_video", f"{e}; it was killed") from None
            except _Died:
                how, number = child.death()
                self._lost()
                raise DecoderCrashError(uri, f"the decoder process {how} reading the header", "open",
                                        signal=number) from None
        if event[0] == "error":
            raise VideoError.from_record(event[1])
        return Extent(*event[1:])

    @contextlib.contextmanager
    def _job(self, uri: str, opener: Opener | None, options: DecodeOptions):
        fileobj = None if is_local(uri) else open_remote(uri, opener)
        try:
            child = self._ready(options)
            child.fileobj = fileobj
            yield child, fileobj
        finally:
            if self._child is not None:
                self._child.fileobj = None
            if fileobj is not None:
                fileobj.close()


class IsolatedReader:
    """`ClipReader`'s clips, `info` and `first_target`, decoded in a `DecoderProcess`'s child."""

    def __init__(self, decoder: DecoderProcess, uri: str, options: DecodeOptions, start_sec: float | None,
                 end_sec: float | None, opener: Opener | None, decode_all: bool,
                 part: tuple[int, int | None, int] | None):
        ClipReader(uri, options, start_sec, end_sec, part=part)  # the same argument checks, here
        self.decoder, self.uri, self.options, self.opener = decoder, uri, options, opener
        self._job = {"uri": uri, "options": options, "start_sec": start_sec, "end_sec": end_sec,
                     "decode_all": decode_all, "part": part}
        self.info = VideoInfo(uri=uri)
        self.first_target: int | None = None

    def __iter__(self) -> Iterator[Clip]:
        options, shape = self.options, (self.options.frames_per_clip, self.options.size, self.options.size, 3)
        budget = limit = options.max_seconds_per_video
        stage, emitted, finished = "open", 0, False
        with self.decoder._job(self.uri, self.opener, options) as (child, fileobj):
            child.send(("clips", dict(self._job, remote=fileobj is not None)))
            try:
                while True:
                    waited = time.monotonic()
                    try:
                        event = child.next_event(budget, f"{stage}, after {emitted} clips")
                    except TimeoutError:
                        finished = True
                        self.decoder._lost()
                        error = LimitExceededError(
                            self.uri, "max_seconds_per_video",
                            f"decoding took longer than max_seconds_per_video={limit:g}s "
                            f"(the decoder process made no progress and was killed, after {emitted} clips)")
                        error.stage = stage
                        raise error from None
                    except _Died:
                        finished = True
                        how, number = child.death()
                        self.decoder._lost()
                        raise DecoderCrashError(self.uri, f"the decoder process {how} after {emitted} clips "
                                                f"(in the {stage} stage)", stage, emitted, number) from None
                    budget -= time.monotonic() - waited
                    kind = event[0]
                    if kind == "probed":
                        stage = "decode"
                    elif kind == "clip":
                        _, slot, fields = event
                        emitted += 1
                        yield Clip(frames=child.frames(slot, shape), **fields)
                    else:
                        finished = True
                        self.info = VideoInfo(**event[2])
                        self.first_target = event[3]
                        if kind == "error":
                            error = VideoError.from_record(event[1])
                            if getattr(error, "limit", None) == "max_decoder_memory_mb":
                                self.decoder._lost()  # what it allocated stays fragmented: a new process
                            raise error
                        return
            finally:
                if not finished:  # the consumer stopped early: the child stops too, or is killed
                    self._cancel(child)

    def _cancel(self, child: _Child) -> None:
        with contextlib.suppress(OSError):
            child.send(("cancel",))
        deadline = time.monotonic() + CANCEL_TIMEOUT_SEC
        try:
            while True:
                kind, *rest = child.next_event(deadline - time.monotonic(), "stopping")
                if kind == "clip":
                    with contextlib.suppress(OSError):  # a child that died meanwhile: its death comes next
                        child.send(("free", rest[0]))
                elif kind in ("done", "error", "cancelled"):
                    return
        except (TimeoutError, _Died):
            self.decoder._lost()


# ---- the child's side -------------------------------------------------------------------------


class _Cancelled(Exception):  # noqa: N818 - the parent asked the child to stop this video
    pass


class _RemoteReadError(OSError):
    """The parent could not read the remote object (the object store's client raised)."""


class _Channel:
    """The child's end: requests to the parent, and the free slots and cancels it sends meanwhile."""

    def __init__(self, conn: Connection, slots: int):
        self.conn = conn
        self.free = list(range(slots))
        self.cancelled = False

    def _control(self, message: tuple) -> None:
        if message[0] == "free":
            self.free.append(message[1])
        elif message[0] == "cancel":
            self.cancelled = True

    def request(self, message: tuple) -> Any:
        """Sends a read request and waits for its reply (frees and cancels are kept on the way)."""
        self.conn.send(message)
        while True:
            reply = self.conn.recv()
            if reply[0] == "data":
                return reply[1]
            if reply[0] == "read_error":
                raise _RemoteReadError(reply[1])
            self._control(reply)

    def take_slot(self) -> int:
        """A free slot, waiting for the parent to free one; raises _Cancelled when asked to stop."""
        while self.conn.poll():
            self._control(self.conn.recv())
        while not self.free and not self.cancelled:
            self._control(self.conn.recv())
        if self.cancelled:
            raise _Cancelled()
        return self.free.pop(0)

    def idle(self, message: tuple) -> None:
        """A message between videos: a slot freed late is free; a cancel that came after the end is moot."""
        if message[0] == "free":
            self.free.append(message[1])


class _RemoteFile(SeekableReader):
    """The parent's remote object, read through the pipe in chunks of READ_CHUNK."""

    def __init__(self, channel: _Channel):
        super().__init__()
        self._channel = channel
        self._start, self._data = 0, b""
        self._size: int | None = None

    def _end(self) -> int:
        if self._size is None:
            self._size = self._channel.request(("size",))
        return self._size

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(READ_CHUNK):
                chunks.append(chunk)
            return b"".join(chunks)
        at = self._pos - self._start
        if not 0 <= at < len(self._data):
            self._start, self._data = self._pos, self._channel.request(("read_at", self._pos, max(size, READ_CHUNK)))
            at = 0
        out = self._data[at:at + size]
        self._pos += len(out)
        return out

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _fault(uri: str) -> tuple[str | None, str]:
    """The fault S3D_DECODER_FAULT asks for on this URI, if any, and when: ('segv', 'clip'), (None, '')."""
    for spec in os.environ.get(FAULT_ENV, "").split(","):
        kind, _, text = spec.strip().partition(":")
        kind, _, when = kind.partition("@")
        if kind in FAULT_KINDS and text and text in uri:
            return kind, when or "clip"
    return None, ""


def _commit_fault(kind: str) -> None:
    """A real failure of the process, in native code where it can be (see the module's text)."""
    libc = ctypes.CDLL(None)
    if kind == "segv":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    elif kind == "abort":
        libc.abort()
    elif kind == "hang":
        while True:
            libc.pause()  # sleeps in the kernel, outside Python, until a signal kills it
    elif kind == "exit":
        os._exit(3)


def _memory_error(error: BaseException | None, capped: bool) -> bool:
    """Whether an error's chain says memory ran out: Python's MemoryError, FFmpeg's ENOMEM, or, under
    the cap, EAGAIN (a decoder thread whose stack could not be mapped)."""
    out_of_memory = (errno.ENOMEM, errno.EAGAIN) if capped else (errno.ENOMEM,)
    for _ in range(16):
        if error is None:
            return False
        if isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno in out_of_memory):
            return True
        error = error.__cause__ or error.__context__
    return False


def _as_video_error(error: Exception, uri: str, stage: str, memory_mb: int, clips: int) -> VideoError:
    """What the parent is told: a VideoError as it is, a memory failure as the limit it ran into."""
    if _memory_error(error, memory_mb > 0):
        limit = LimitExceededError(uri, "max_decoder_memory_mb",
                                   f"the decoder ran out of memory under max_decoder_memory_mb={memory_mb} "
                                   f"(after {clips} clips): {type(error).__name__}: {error}")
        limit.stage = stage
        limit.clips_emitted = clips
        return limit
    if isinstance(error, OpenError) and isinstance(error.__cause__, _RemoteReadError):
        error.transient = True  # the object store failed, not the file: as when the parent opens it
    if isinstance(error, VideoError):
        return error
    unexpected = VideoError(uri, f"unexpected error in the decoder: {type(error).__name__}: {error}")
    unexpected.stage = stage
    unexpected.error_type = type(error).__name__
    return unexpected


def _run_clips(channel: _Channel, shared: mmap.mmap, slot_bytes: int, memory_mb: int, job: dict) -> None:
    uri, options = job["uri"], job["options"]
    conn, stage, clips = channel.conn, ["open"], 0
    fault, when = _fault(uri)
    if fault and when == "open":
        _commit_fault(fault)

    def probed() -> None:
        stage[0] = "decode"
        conn.send(("probed",))

    opener = (lambda _: _RemoteFile(channel)) if job["remote"] else None  # a new one for each pass
    reader = ClipReader(uri, options, job["start_sec"], job["end_sec"], opener=opener,
                        decode_all=job["decode_all"], part=job["part"], on_probe=probed)
    try:
        for clip in reader:
            slot = channel.take_slot()
            fields = {f.name: getattr(clip, f.name) for f in dataclasses.fields(clip) if f.name != "frames"}
            view = np.frombuffer(shared, np.uint8, clip.frames.size, slot * slot_bytes)
            view[:] = clip.frames.reshape(-1)
            conn.send(("clip", slot, fields))
            clips += 1
            if fault and when == "clip":
                _commit_fault(fault)
        conn.send(("done", None, dataclasses.asdict(reader.info), reader.first_target))
    except _Cancelled:
        conn.send(("cancelled",))
    except Exception as e:  # noqa: BLE001 - every error of one video goes to the parent as its record
        error = _as_video_error(e, uri, stage[0], memory_mb, clips)
        conn.send(("error", error.to_record(), dataclasses.asdict(reader.info), reader.first_target))


def _run_extent(channel: _Channel, memory_mb: int, uri: str, remote: bool) -> None:
    fault, when = _fault(uri)
    if fault and when == "open":
        _commit_fault(fault)
    try:
        extent = read_extent(uri, (lambda _: _RemoteFile(channel)) if remote else None)
        channel.conn.send(("extent", extent.duration_sec, extent.first_frame_sec))
    except Exception as e:  # noqa: BLE001 - as in _run_clips
        channel.conn.send(("error", _as_video_error(e, uri, "open", memory_mb, 0).to_record()))


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when its parent dies, even if it hangs in native code."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


def _child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The decoder process (started by decoder.process.DecoderProcess)")
    for flag in ("--fd", "--shared-fd", "--slots", "--slot-bytes", "--memory-mb", "--parent"):
        parser.add_argument(flag, type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    import faulthandler
    faulthandler.enable()  # a native crash prints the Python stack to the worker's log
    if args.memory_mb > 0:
        import resource
        limit = args.memory_mb << 20
        # The data limit counts what the process can write to (heap, anonymous maps, thread stacks),
        # not address space merely reserved, so the cap means the same on any number of cores.
        resource.setrlimit(getattr(resource, "RLIMIT_DATA", resource.RLIMIT_AS), (limit, limit))
    conn = Connection(args.fd)
    shared = mmap.mmap(args.shared_fd, args.slots * args.slot_bytes)
    channel = _Channel(conn, args.slots)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        channel.cancelled = False
        if message[0] == "clips":
            _run_clips(channel, shared, args.slot_bytes, args.memory_mb, message[1])
        elif message[0] == "extent":
            _run_extent(channel, args.memory_mb, *message[1:])
        elif message[0] == "exit":
            return
        else:
            channel.idle(message)


if __name__ == "__main__":
    _child_main()
