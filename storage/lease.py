"""A run's lease on its output prefix: never two live runs on one prefix.

A second launch on a prefix (an Airflow retry, a manual re-trigger) would otherwise clear the
first run's files while it runs, and the rows of two runs would mix. A launch takes the lease,
`PREFIX/_lease.json`, before it touches anything else there, and gives it back when the run ends.
The lease names its holder:
- a local run: host, process id and the process's start time (so a reused pid is not mistaken for it);
- a submitted Dataflow job: project, region and job id, written once the job exists.

A launch that finds a lease asks whether its holder still lives: a local process on this host that
is gone, or a Dataflow job in a terminal state, is stale and its lease is taken over. A live
holder, or one that cannot be checked (a process on another host), is named in the refusal.

Taking the lease is exclusive on local disk (O_CREAT | O_EXCL). An object store has no such
create through Beam's filesystems, so there the launch writes its lease with a token, waits
SETTLE_SEC, and reads it back: of two launches at once, the later write wins and the other sees a
token not its own and refuses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from storage.paths import is_local, local_path

LEASE_NAME = "_lease.json"
SETTLE_SEC = 2.0
TERMINAL_JOB_STATES = {"JOB_STATE_DONE", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_UPDATED",
                       "JOB_STATE_DRAINED"}

# How a Dataflow job's state is looked up: (project, region, job_id) -> state name, e.g.
# "JOB_STATE_RUNNING", or None when it cannot be told.
JobState = Callable[[str, str, str], str | None]


class LeaseHeldError(RuntimeError):
    """Another live run holds the prefix; the message names it and what to do."""


def lease_path(prefix: str) -> str:
    return prefix.rstrip("/") + "/" + LEASE_NAME


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    now = _process_start(pid)
    if now is None:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie holds nothing
                return False
    except OSError:
        return False
    return started is None or now == started


@dataclasses.dataclass
class Lease:
    prefix: str
    holder: dict[str, Any]

    @property
    def token(self) -> str:
        return self.holder["token"]

    def describe(self) -> str:
        h = self.holder
        if h.get("kind") == "dataflow":
            return f"Dataflow job {h['job_id']} (project {h['project']}, region {h['region']}), since {h['since']}"
        return f"process {h['pid']} on {h['host']}, since {h['since']}"


def _read(prefix: str) -> dict[str, Any] | None:
    from apache_beam.io.filesystems import FileSystems

    from storage.objects import open_object

    path = lease_path(prefix)
    try:
        if is_local(prefix):
            with open(local_path(path), encoding="utf-8") as f:
                return json.load(f)
        if not FileSystems.exists(path):
            return None
        with open_object(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):  # a lease cut short by a crash mid-write: nobody's
        return {"kind": "unreadable"}


def _write(prefix: str, holder: dict[str, Any], exclusive: bool) -> bool:
    """Writes the lease; False when `exclusive` and one exists already (local disk only)."""
    data = json.dumps(holder, indent=1).encode("utf-8")
    path = lease_path(prefix)
    if is_local(prefix):
        local = local_path(path)
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        if not exclusive:
            from storage.objects import write_object

            write_object(path, data, "application/json")
            return True
        try:
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    from storage.objects import write_object

    write_object(path, data, "application/json")
    return True


def _delete(prefix: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    path = lease_path(prefix)
    if is_local(prefix):
        try:
            os.remove(local_path(path))
        except FileNotFoundError:
            pass
        return
    if FileSystems.exists(path):
        FileSystems.delete([path])


def is_stale(holder: dict[str, Any], job_state: JobState | None) -> bool | None:
    """True: the holder is gone; False: it lives; None: it cannot be told from here."""
    kind = holder.get("kind")
    if kind == "unreadable":
        return True
    if kind == "local":
        if holder.get("host") != socket.gethostname():
            return None
        return not _process_alive(int(holder["pid"]), holder.get("start"))
    if kind == "dataflow":
        state = None if job_state is None else job_state(holder["project"], holder["region"], holder["job_id"])
        return None if state is None else state in TERMINAL_JOB_STATES
    return None


def _local_holder() -> dict[str, Any]:
    pid = os.getpid()
    return {"kind": "local", "host": socket.gethostname(), "pid": pid, "start": _process_start(pid),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}


def acquire(prefix: str, job_state: JobState | None = None, settle_sec: float = SETTLE_SEC) -> Lease:
    """Takes the prefix's lease for this process; raises LeaseHeldError when a live run holds it.

    `job_state` looks up a Dataflow holder's state (the launcher passes one when it can reach Dataflow).
    """
    holder = _local_holder()
    for _ in range(3):  # a stale lease is removed, then taken like a free one
        if is_local(prefix):
            if _write(prefix, holder, exclusive=True):
                return Lease(prefix, holder)
        else:
            if _read(prefix) is None:
                _write(prefix, holder, exclusive=False)
                time.sleep(settle_sec)
                if (_read(prefix) or {}).get("token") == holder["token"]:
                    return Lease(prefix, holder)
        current = _read(prefix)
        if current is None:
            continue  # released meanwhile
        other = Lease(prefix, current)
        stale = is_stale(current, job_state)
        if stale is True:
            _delete(prefix)
            continue
        what = other.describe() if current.get("kind") in ("local", "dataflow") else "another launch"
        hint = ("wait for it, or stop it" if stale is False else
                f"if that run is gone, delete {lease_path(prefix)}")
        raise LeaseHeldError(f"{prefix} is in use by a live run: {what}; {hint}")
    raise LeaseHeldError(f"{prefix}: could not take its lease (other launches keep taking it)")


def hand_to_job(lease: Lease, project: str, region: str, job_id: str) -> Lease:
    """The submitted Dataflow job holds the prefix from now on (the launcher may exit)."""
    holder = {"kind": "dataflow", "project": project, "region": region, "job_id": job_id,
              "since": lease.holder["since"], "token": lease.token}
    _write(lease.prefix, holder, exclusive=False)
    return Lease(lease.prefix, holder)


def release(lease: Lease) -> None:
    """Gives the lease back, if it is still this run's (a takeover after a presumed death is not undone)."""
    current = _read(lease.prefix)
    if current is not None and current.get("token") == lease.token:
        _delete(lease.prefix)
