"""Checks a launch makes before it touches any output: what would otherwise fail inside the workers.

A job whose model cannot be loaded fails in every worker, minutes after the launch, in hundreds
of lines of tracebacks, and only after the launcher replaced the prefix's earlier run. Here it
fails in one line, at once, with the prefix untouched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request

from storage.paths import is_local, local_path

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
HUB_TIMEOUT_SEC = 10.0


class PreflightError(ValueError):
    """A launch-time check failed; the message is one line that says what to do."""


def hub_cache_dir(handle: str) -> str:
    """Where tensorflow_hub caches a module it downloaded: $TFHUB_CACHE_DIR (default: the temp dir's
    tfhub_modules), in a folder named by the SHA-1 of the handle (tensorflow_hub's "Caching model
    downloads" page)."""
    root = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")
    return os.path.join(root, hashlib.sha1(handle.encode("utf-8")).hexdigest())


def _holds_saved_model(exists, directory: str) -> bool:
    return any(exists(directory.rstrip("/") + "/" + name) for name in SAVED_MODEL_FILES)


def check_model_handle(handle: str) -> str:
    """Raises PreflightError unless `handle` can be loaded: a directory (local or on any Beam
    filesystem) holding a SavedModel, or a hub URL that is cached or answers. Returns how it was found."""
    if handle.startswith(("http://", "https://")):
        if _holds_saved_model(os.path.exists, hub_cache_dir(handle)):
            return "in the TF Hub cache"
        request = urllib.request.Request(handle + "?tf-hub-format=compressed", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=HUB_TIMEOUT_SEC):
                return "reachable"
        except urllib.error.HTTPError as e:
            if e.code in (403, 405):  # the server is there and refuses HEAD: hub's GET will be answered
                return "reachable"
            raise PreflightError(f"--model {handle}: the hub answered HTTP {e.code} ({e.reason}); check the URL") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise PreflightError(
                f"--model {handle}: cannot reach it ({reason}). Offline, download the module elsewhere and "
                "point --model at its directory, or set TFHUB_CACHE_DIR to a cache that holds it") from e
    if is_local(handle):
        path = local_path(handle)
        if not os.path.exists(path):
            raise PreflightError(f"--model {handle}: no such directory. Point it at a SavedModel directory "
                                 "(python -m s3d.export --output DIR writes the stand-in) or at the TF Hub URL")
        if not os.path.isdir(path) or not _holds_saved_model(os.path.exists, path):
            raise PreflightError(f"--model {handle}: not a SavedModel directory (it has no saved_model.pb)")
        return "a local SavedModel"
    from apache_beam.io.filesystems import FileSystems

    try:
        found = _holds_saved_model(FileSystems.exists, handle)
    except Exception as e:  # noqa: BLE001 - a store's client raises its own types; all mean "cannot read"
        raise PreflightError(f"--model {handle}: cannot read it ({type(e).__name__}: {e}); check access "
                             "(credentials, network) to it") from e
    if not found:
        raise PreflightError(f"--model {handle}: no SavedModel there (no saved_model.pb under it)")
    return "a SavedModel on the store"
