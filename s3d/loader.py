"""One loader for every S3D MIL-NCE model: the real TF Hub module, a local or `gs://` SavedModel.

`load_s3d(handle)` goes through `tensorflow_hub.load` whatever the handle is, so the
real module (TF1 Hub format) and this project's exports are called the same way:
signatures `video(images=...)` and `text(words=...)`, by keyword.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from s3d.devices import DeviceClaim, claim_gpu, visible_gpus
from s3d.export import PROVENANCE_FILE, VOCAB_FILE
from s3d.precision import PrecisionPlan

DEFAULT_HANDLE = "https://tfhub.dev/deepmind/mil-nce/s3d/1"
_REMOTE_PREFIXES = ("http://", "https://")

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded from the given handle; the message says what to do."""


def _is_remote(handle: str) -> bool:
    return handle.startswith(_REMOTE_PREFIXES)


def configure_gpus() -> int:
    """Turns on memory growth on every visible GPU (so several model copies can share one); returns the GPU count."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier load in this process: the setting stays as it was
            pass
    return len(gpus)


def _read_provenance(path: str) -> dict[str, Any]:
    import tensorflow as tf

    file = os.path.join(path, PROVENANCE_FILE)
    if not tf.io.gfile.exists(file):
        # The TF Hub module and other third-party exports carry no provenance of ours.
        return {"kind": "external", "trained": None}
    with tf.io.gfile.GFile(file) as f:
        return json.loads(f.read())


def _read_vocabulary(path: str) -> dict[str, int] | None:
    """The export's vocabulary as word -> token, or None (the hub module keeps its own inside the graph)."""
    import tensorflow as tf

    from s3d.vocab import word_to_token

    file = os.path.join(path, VOCAB_FILE)
    if not tf.io.gfile.exists(file):
        return None
    with tf.io.gfile.GFile(file) as f:
        return word_to_token([w for w in f.read().split("\n") if w])


class S3DModel:
    """A loaded S3D MIL-NCE model: numpy in, numpy out.

    Attributes:
        handle: what it was loaded from, as given.
        provenance: the export's own description (kind, trained, seed, ...), or
            {"kind": "external"} for the hub module.
        precision: what the video tower really computes in (s3d.precision.plan_precision: float32 where the
            machine cannot run the requested one natively); inputs and outputs are float32 always.
        requested_precision: what was asked for.
    """

    def __init__(
        self, handle: str, module: Any, provenance: dict[str, Any], vocabulary: dict[str, int] | None = None,
        path: str | None = None, device: DeviceClaim | None = None, plan: PrecisionPlan | None = None,
    ):
        self.handle = handle
        self.device = device  # the GPU this copy runs on (None: TensorFlow's default placement)
        self.path = path or handle  # where hub resolved the handle to (its cache for a URL)
        self.provenance = provenance
        self._vocabulary = vocabulary
        self._module = module  # keeps the restored variables alive
        self._video = module.signatures["video"]
        self._text = module.signatures["text"]  # the text tower stays float32 at every precision
        plan = plan or PrecisionPlan("float32", "float32")
        self.requested_precision = plan.requested
        self.precision = plan.effective  # what the video tower really computes in
        self.lowering = None  # what the precision rewrite did (s3d.precision.LoweringReport), None when none ran
        if plan.effective != "float32":
            from s3d.precision import lower_video_signature

            with self._placement():
                lowered, self.lowering = lower_video_signature(self._video, plan.effective)
            if self.lowering.effective:
                self._video = lowered
            else:  # the rewrite found nothing to lower: the module's own signature runs, in float32
                self.precision = "float32"

    @property
    def trained(self) -> bool | None:
        return self.provenance.get("trained")

    def embed_video(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeds clips.

        Args:
            frames: [B, T, H, W, 3] or one clip [T, H, W, 3]; uint8 (0..255) or float (0..1), RGB.
                T, H and W must be even.

        Returns:
            (mixed_5c [B, 1024], video_embedding [B, 512]) as float32 numpy arrays.
        """
        import tensorflow as tf

        frames = np.asarray(frames)
        if frames.ndim == 4:
            frames = frames[None]
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [B, T, H, W, 3] or [T, H, W, 3] RGB, got shape {frames.shape}")
        if any(d % 2 or d == 0 for d in frames.shape[1:4]):
            raise ValueError(
                f"S3D needs an even, non-zero number of frames, height and width; got T, H, W = {frames.shape[1:4]}"
            )
        if frames.dtype != np.uint8 and not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"frames must be uint8 or float, got dtype {frames.dtype}")
        # Inside this copy's placement: the copy on GPU 1 must not cast its clips on GPU 0.
        with self._placement():
            if frames.dtype == np.uint8:
                # Clips travel as uint8 (4x smaller); they become float32 here, at the model.
                images = tf.cast(tf.convert_to_tensor(frames), tf.float32) / 255.0
            else:
                images = tf.convert_to_tensor(frames, tf.float32)
            out = self._video(images=images)
        return out["mixed_5c"].numpy(), out["video_embedding"].numpy()

    def _placement(self):
        import tensorflow as tf

        return tf.device(self.device.device) if self.device else contextlib.nullcontext()

    def known_words(self, sentences: Sequence[str]) -> list[int | None]:
        """How many words of each sentence the vocabulary knows (the model uses the first 16).

        None for each sentence when the module does not ship its vocabulary as a file
        (the TF Hub module); `embed_text` still works, and a sentence with no known word
        gets the padding-only embedding.
        """
        if self._vocabulary is None:
            return [None] * len(sentences)
        from s3d.vocab import split_words

        return [sum(w in self._vocabulary for w in split_words(s)) for s in sentences]

    def no_known_words(self, sentences: Sequence[str], embeddings: np.ndarray | None = None) -> list[bool]:
        """Whether each sentence has no word the vocabulary knows (its embedding is the padding-only vector).

        With the vocabulary file (this project's exports) it is a count. The TF Hub module keeps its
        vocabulary inside the graph, so there it is decided from `embeddings` (computed when not
        given): the sentence's embedding equals the empty sentence's within float32 rounding. The two
        come from different batches, so they differ in the last bits (oneDNN picks kernels by batch);
        the tolerance is PADDING_RTOL of the padding vector's norm.
        """
        known = self.known_words(sentences)
        if all(k is not None for k in known):
            return [k == 0 for k in known]
        embeddings = self.embed_text(sentences) if embeddings is None else embeddings
        return [bool(x) for x in is_padding_only(embeddings, self.embed_text([""])[0])]

    def embed_text(self, sentences: Sequence[str]) -> np.ndarray:
        """Embeds sentences: list of str -> text_embedding float32 [B, 512]."""
        import tensorflow as tf

        if isinstance(sentences, (str, bytes)):
            raise TypeError("embed_text takes a list of sentences, not one string")
        bad = [s for s in sentences if not isinstance(s, str)]
        if bad:
            raise TypeError(f"sentences must be str, got {type(bad[0]).__name__}: {bad[0]!r}")
        words = tf.constant(list(sentences), dtype=tf.string, shape=[len(sentences)])
        with self._placement():
            return self._text(words=words)["text_embedding"].numpy()


# The text tower's last layer sums 2,048 products per output, so one embedding computed in two
# batches differs by about sqrt(2048) * 2**-24, 3e-6, of its norm; measured on the stand-in: 4.3e-7,
# on AVX-512 and AVX2 kernels alike. A sentence of one known word lies 0.67 of the norm away at the
# least (median 0.82, every word of the stand-in's vocabulary): 1e-4 sits far from both.
PADDING_RTOL = 1e-4


def is_padding_only(embeddings: np.ndarray, padding: np.ndarray) -> np.ndarray:
    """Per row of `embeddings` [B, 512]: whether it is the padding-only vector `padding` within float32 rounding."""
    distance = np.linalg.norm(np.asarray(embeddings, np.float64) - padding, axis=-1)
    return distance <= PADDING_RTOL * np.linalg.norm(np.asarray(padding, np.float64))


def _check_path(handle: str) -> None:
    """A local or gs:// handle must exist and be readable; ModelLoadError says what to do."""
    import tensorflow as tf

    try:
        exists = tf.io.gfile.exists(handle)
    except tf.errors.OpError as e:  # gs:// without credentials or network, an unknown scheme, ...
        raise ModelLoadError(
            f"cannot read the model at {handle!r}: {type(e).__name__}: {e.message.strip()}. Check access to it "
            "(for gs://: credentials and network), or copy the SavedModel to a local directory and point "
            "--model there"
        ) from e
    if not exists:
        raise ModelLoadError(
            f"no model at {handle!r}: the path does not exist. Point --model at a SavedModel directory "
            "(`python -m s3d.export --output DIR` writes the stand-in) or at the TF Hub module "
            f"{DEFAULT_HANDLE}"
        )


def _report_precision(model: S3DModel, plan: PrecisionPlan) -> None:
    """Logs what the precision rewrite did, and warns when what runs is not what was asked."""
    from s3d.precision import describe

    if plan.reason:
        log.warning("%s", plan.reason)
    if model.lowering is not None and not model.lowering.effective:
        log.warning("--precision %s changed no op of %s's video tower: float32 runs, and the output says so",
                    plan.requested, model.handle)
    if model.lowering is not None:
        log.info("%s", describe(model.lowering))


def _load_module(handle: str, device: DeviceClaim | None) -> tuple[str, Any]:
    """(where hub resolved the handle to, the loaded module with `video` and `text` signatures)."""
    from s3d.quiet import import_tensorflow, import_tensorflow_hub

    tf = import_tensorflow()  # without TensorFlow's start-up chatter
    hub = import_tensorflow_hub()
    try:
        path = hub.resolve(handle)
        with tf.device(device.device) if device else contextlib.nullcontext():  # variables on this copy's GPU
            module = hub.load(path)
    except Exception as e:  # hub and TF raise many unrelated types for a bad handle; all mean "cannot load"
        hint = (
            "The machine may be offline or the hub unreachable: download the module elsewhere and point "
            "--model at its directory, or set TFHUB_CACHE_DIR to a cache that already holds it."
            if _is_remote(handle)
            else "Is it a SavedModel directory (with saved_model.pb)?"
        )
        raise ModelLoadError(f"could not load the S3D model from {handle!r}: {type(e).__name__}: {e}. {hint}") from e
    names = sorted(getattr(module, "signatures", {}).keys())
    if "video" not in names or "text" not in names:
        raise ModelLoadError(
            f"{handle!r} is not an S3D MIL-NCE module: it has signatures {names}, expected 'video' and 'text'"
        )
    return path, module


def load_s3d(handle: str = DEFAULT_HANDLE, precision: str = "float32") -> S3DModel:
    """Loads the model from a TF Hub URL, a local SavedModel directory or a `gs://` path.

    `precision` is what the video tower is asked to compute in: float32 (the module as it
    is), bfloat16 (CPUs with AVX512_BF16 or AMX) or float16 (GPUs with tensor cores); see
    `s3d.precision`. Where this machine cannot run it natively, float32 runs, the model's
    `precision` says so (`requested_precision` keeps what was asked) and a warning says why.

    On a machine with GPUs the copy claims a GPU of its own (`s3d.devices`), so that
    several copies (Beam's `model_copies`, one per GPU) do not all land on GPU 0.

    Raises:
        ModelLoadError: nothing loadable at `handle`, it lacks the `video`/`text` signatures,
            or its video tower cannot run in `precision`.
    """
    from s3d.precision import check_precision, plan_precision, this_machine
    from s3d.quiet import import_tensorflow

    check_precision(precision)
    import_tensorflow()  # first, before configure_gpus imports it: without TensorFlow's start-up chatter
    if not handle:
        raise ModelLoadError("no model handle given: pass a TF Hub URL or a SavedModel directory")
    configure_gpus()
    if not _is_remote(handle):
        _check_path(handle)
    device = claim_gpu(visible_gpus())
    try:
        path, module = _load_module(handle, device)
        provenance, vocabulary = _read_provenance(path), _read_vocabulary(path)
        plan = (plan_precision(precision, this_machine(device.device if device else None))
                if precision != "float32" else PrecisionPlan(precision, precision))
        try:
            model = S3DModel(handle, module, provenance, vocabulary, path, device, plan)
        except Exception as e:  # the precision rewrite failed on this module's graph
            raise ModelLoadError(
                f"could not run the video tower of {handle!r} in {precision}: {type(e).__name__}: {e}. "
                "--precision float32 runs the module as it is"
            ) from e
    except BaseException:
        if device:  # a copy that did not load gives its GPU back
            device.release()
        raise
    if device:
        log.info("model copy from %s on %s", handle, device.device)
    if precision != "float32":
        _report_precision(model, plan)
    if model.trained is False:
        log.warning("model %s is an untrained stand-in: its embeddings carry no meaning", handle)
    return model


# Models this process loaded, the most recent last: a launcher that runs many graphs (a run in chunks)
# loads and optimizes the module once, not once per graph, and does not grow by a model per graph.
# Keyed by what load_s3d's result depends on: the handle, the precision, and oneDNN's ISA cap.
_LOADED: collections.OrderedDict[tuple, S3DModel] = collections.OrderedDict()
_LOADED_KEEP = 8  # a run has a video and a text model; a process that runs many kinds of job (a notebook, a test) keeps more
_LOAD_LOCK = threading.Lock()


def load_once(handle: str, precision: str = "float32") -> S3DModel:
    """load_s3d(handle, precision), reusing this process's earlier load of the same.

    For the job's model handler and the tools that embed (search, evaluate): a process that runs many
    graphs or commands (a run in chunks, a notebook, a test) loads and optimizes a module once.
    """
    key = (handle, precision, os.environ.get("ONEDNN_MAX_CPU_ISA"))
    with _LOAD_LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
        model = load_s3d(handle, precision=precision)
        _LOADED[key] = model
        while len(_LOADED) > _LOADED_KEEP:
            _LOADED.popitem(last=False)
        return model
