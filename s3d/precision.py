"""Running the video tower in a lower precision: bfloat16 on CPUs, float16 on GPUs.

`load_s3d(handle, precision=...)` calls `lower_video_signature` here for anything but
float32. The signature is frozen (its variables become constants) and TensorFlow's
own mixed-precision graph rewrite (Grappler's auto mixed precision) is run on it once,
at load:

* bfloat16: the oneDNN rewrite (`auto_mixed_precision_onednn_bfloat16`), for CPUs with
  AVX512_BF16 or AMX, where convolutions in bfloat16 run on the bfloat16 units;
* float16: the CUDA rewrite (`auto_mixed_precision`), for GPUs with tensor cores
  (compute capability 7.0 and up). It rewrites only ops placed on such a GPU.

The rewrite decides, op type by op type, what is safe in the lower precision (its
allow, infer and deny lists: convolutions and matrix products go down, reductions that
need range stay up, BatchNorm statistics stay float32). On top of that, this module
keeps in float32 what a measurement showed to need it (see `keep_float32`). The inputs
and outputs stay float32, so the Parquet schema does not change.

float32 is not rewritten at all: `load_s3d` keeps the module's signature as it is, and
its outputs stay bit for bit what they were.

The rewrite works on whatever graph the module has (this project's export, a converted
checkpoint, the TF Hub module), because it goes by op types and graph structure, not by
names.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

PRECISIONS = ("float32", "bfloat16", "float16")
DEFAULT_PRECISION = "float32"

# The op types keep_float32 counts as convolutions.
_CONV_OPS = frozenset({"Conv3D", "Conv2D", "DepthwiseConv2dNative"})
KEEP_DEPTH = 3  # convolutions from the input kept in float32: see keep_float32
_DTYPE_NAMES = {1: "float32", 14: "bfloat16", 19: "float16"}  # DataType enum values: DT_FLOAT, DT_BFLOAT16, DT_HALF
_REWRITES = {"bfloat16": "auto_mixed_precision_onednn_bfloat16", "float16": "auto_mixed_precision"}


def check_precision(precision: str) -> str:
    """The precision if it is one of PRECISIONS; ValueError naming the bad value otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


@dataclasses.dataclass(frozen=True)
class LoweringReport:
    """What the rewrite did to the video signature's graph."""

    precision: str
    lowered_ops: int  # ops that now compute in the lower precision
    float_ops: int  # floating-point ops of the rewritten graph, lowered or not
    kept_float32: tuple[str, ...]  # ops this module kept in float32 on purpose

    @property
    def effective(self) -> bool:
        return self.lowered_ops > 0


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) at or above the first with bfloat16 dot products
# (AVX512_CORE_BF16); a cap below it leaves bfloat16 to emulation even on a CPU that has the units.
_BF16_ISAS = frozenset({
    "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT",
})


def cpu_has_native_bfloat16(flags: set[str] | None = None, isa_cap: str | None = None) -> bool | None:
    """True when oneDNN can use bfloat16 instructions here (AVX512_BF16 or AMX-BF16); None when unknown.

    Args:
        flags: the CPU's flags (default: /proc/cpuinfo).
        isa_cap: oneDNN's ISA cap (default: the ONEDNN_MAX_CPU_ISA variable): AVX2 makes an AVX-512 machine
            behave as an AVX2-only one, bfloat16 included.
    """
    flags = cpu_flags() if flags is None else flags
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") if isa_cap is None else isa_cap
    if isa_cap and isa_cap.strip().upper() not in _BF16_ISAS:
        return False
    if flags is None:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN path in this process (TF_ENABLE_ONEDNN_OPTS and the CPU decide)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def gpu_compute_capability(device: str | None) -> tuple[int, int] | None:
    """(major, minor) of the GPU named `device` ('/device:GPU:0'), or None for no GPU or unknown."""
    if not device:
        return None
    import tensorflow as tf

    index = device.rsplit(":", 1)[-1]
    for gpu in tf.config.list_physical_devices("GPU"):
        if gpu.name.rsplit(":", 1)[-1] == index:
            details = tf.config.experimental.get_device_details(gpu)
            capability = details.get("compute_capability")
            return tuple(capability) if capability else None
    return None


@dataclasses.dataclass(frozen=True)
class Machine:
    """What decides the precision a model copy computes in. None: not known (a launcher for remote workers)."""

    gpu_device: str | None = None  # the GPU the copy runs on; None: the CPU
    gpu_capability: tuple[int, int] | None = None
    cpu_bf16: bool | None = None  # cpu_has_native_bfloat16()
    onednn: bool | None = None  # onednn_enabled()


def this_machine(gpu_device: str | None) -> Machine:
    """The facts of the machine this process runs on, for a model copy on `gpu_device` (None: the CPU)."""
    return Machine(gpu_device, gpu_compute_capability(gpu_device), cpu_has_native_bfloat16(), onednn_enabled())


@dataclasses.dataclass(frozen=True)
class PrecisionPlan:
    """The precision asked for and the one that will really run, with the reason when they differ."""

    requested: str
    effective: str
    reason: str | None = None  # why `effective` is not `requested` (or what to expect): a warning
    onednn: bool | None = None  # whether TensorFlow's oneDNN path runs (None: decided on remote workers)


# Measured on an AMD EPYC (Zen 4, with AVX512_BF16) with oneDNN's ISA capped, the rewritten bfloat16 graph
# forced to run, batches of 4 natural 32x224x224 clips alternated with float32 in one process:
# - capped at AVX512_CORE (AVX-512 without bfloat16: Skylake, Cascade Lake, Dataflow's n1/n2): 0.52x
#   float32's speed, for features at cosine 0.998 to float32's;
# - capped at AVX2 (AMD Zen 3, Dataflow's n2d/t2d): oneDNN cannot create a bfloat16 convolution at all
#   ("could not create a primitive descriptor"), so every batch would fail.
# Nothing is gained by lowering there, so such CPUs get float32 and a warning instead of a refusal:
# a fleet of mixed CPUs still finishes its run, and the output records what ran.
EMULATED_BF16_SPEED = 0.52


def plan_precision(requested: str, machine: Machine) -> PrecisionPlan:
    """What the video tower will compute in on `machine` when `requested` is asked for.

    A precision the hardware cannot run natively becomes float32, the module as it is, and
    the reason says so: lowering it would cost a rewrite at load (about 10 s) and, for
    bfloat16 without bfloat16 units, run slower than float32.
    """
    check_precision(requested)

    def to_float32(reason: str | None = None) -> PrecisionPlan:
        return PrecisionPlan(requested, "float32", reason, machine.onednn)

    if requested == "float32":
        return to_float32()
    asked = f"--precision {requested} asked for"
    if requested == "bfloat16":
        if machine.gpu_device:
            return to_float32(
                f"{asked}, but this model copy runs on {machine.gpu_device} and bfloat16 is the CPU precision "
                "(TensorFlow's bfloat16 rewrite is oneDNN's): float32 runs, and the output says so. Use --precision "
                "float16 on GPUs")
        if machine.onednn is False:
            return to_float32(
                f"{asked}, but TensorFlow's oneDNN path is off (TF_ENABLE_ONEDNN_OPTS=0) and its bfloat16 rewrite "
                "needs it: float32 runs, and the output says so")
        if machine.cpu_bf16 is False:
            return to_float32(
                f"{asked}, but this CPU has neither AVX512_BF16 nor AMX (or ONEDNN_MAX_CPU_ISA caps oneDNN below "
                f"them): bfloat16 would be emulated at about {EMULATED_BF16_SPEED:g}x float32's speed (with AVX-512) or "
                "not run at all (AVX2 only), so float32 runs, and the output says so. CPUs with bfloat16 units: Intel "
                "Sapphire Rapids and later (Dataflow's c3/n4 machine types), AMD Zen 4 and later (c3d)")
        if machine.cpu_bf16 is None:
            return PrecisionPlan(requested, "bfloat16", (
                f"{asked}; the CPU's features cannot be read here (remote workers, or no /proc/cpuinfo): "
                "bfloat16 is what the output records, and a job's worker whose CPU lacks AVX512_BF16 and AMX "
                "refuses to load the model rather than write float32 features under that name"), machine.onednn)
        return PrecisionPlan(requested, "bfloat16", onednn=machine.onednn)
    # float16
    if not machine.gpu_device:
        return to_float32(
            f"{asked}, but float16 is for GPUs with tensor cores (compute capability 7.0 and up: T4, L4, A100) and "
            "TensorFlow sees no GPU for this model copy: float32 runs on the CPU, and the output says so. On CPUs "
            "with AVX512_BF16 or AMX use --precision bfloat16")
    if machine.gpu_capability is not None and machine.gpu_capability < (7, 0):
        major, minor = machine.gpu_capability
        return to_float32(
            f"{asked}, but {machine.gpu_device} has compute capability {major}.{minor}, below the 7.0 of tensor "
            "cores: float32 runs, and the output says so")
    return PrecisionPlan(requested, "float16", onednn=machine.onednn)


def _node_inputs(graph_def) -> dict[str, list[str]]:
    return {n.name: [i.lstrip("^").split(":")[0] for i in n.input] for n in graph_def.node}


def _upstream(starts: Iterable[str], inputs: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        for name in inputs.get(stack.pop(), ()):
            if name not in seen:
                seen.add(name)
                stack.append(name)
    return seen


def conv_depths(graph_def) -> dict[str, int]:
    """Each convolution's depth: how many convolutions the longest path from the input passes, itself included."""
    inputs = _node_inputs(graph_def)
    convs = [n.name for n in graph_def.node if n.op in _CONV_OPS]
    upstream = {c: _upstream([c], inputs) & set(convs) for c in convs}
    depth: dict[str, int] = {}
    for c in sorted(convs, key=lambda c: len(upstream[c])):  # a conv has more conv ancestors than any ancestor
        depth[c] = 1 + max((depth[u] for u in upstream[c]), default=0)
    return depth


def keep_float32(graph_def, depth: int = KEEP_DEPTH) -> list[str]:
    """The ops kept in float32 at any lower precision: the first `depth` convolutions from the images.

    In S3D, depth 1 is conv1 (2x4x4 over the space-to-depth images), 2 adds conv_2b
    (1x1x1), 3 and 4 add conv_2c's spatial and temporal halves; Mixed_3b starts at 5.
    Measured with `benchmarks/precision.py` (figures in BENCHMARKS.md) on natural-looking
    32x224x224 clips fed as uint8: the cosine of `video_embedding` to float32's, how often a
    text query's top-10 clips agree with float32's, and the speed against float32. With
    every convolution in bfloat16 the top-10 agreement is about 0.85 and the mean cosine
    below 0.998; each convolution kept from the input raises both, and each costs speed
    (conv1 is about a quarter of the FLOPs, each half of conv_2c about a sixth). KEEP_DEPTH
    is the shallowest depth that meets the bars on every corpus of that table (cosine mean
    0.998, top-10 agreement 0.9) at 1.5x float32's speed or more. An error made early
    passes through every later layer, and the images' 256 levels do not fit bfloat16's
    8-bit significand. Keeping the tail in float32 as well (final pooling, gating, the
    1024->512 projection) changed the cosine by less than 0.00002 when this was chosen, so
    the rewrite's own lists decide it.
    """
    return [c for c, d in conv_depths(graph_def).items() if d <= depth]


def _freeze(signature):
    """The video signature with its variables as constants: (frozen ConcreteFunction, its GraphDef)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # Freeze a fresh trace that calls the signature, not the signature's own graph: a TF1 Hub
    # module's pruned signature keeps the module's collections, whose table initializer (the
    # text tower's vocabulary) is not in the video graph, and freezing that graph fails.
    images_spec = tf.nest.flatten(signature.structured_input_signature)[0]

    @tf.function(input_signature=[tf.TensorSpec(images_spec.shape, tf.float32, name="images")])
    def call(images):
        return signature(images=images)

    frozen = convert_variables_to_constants_v2(call.get_concrete_function())
    if len(frozen.inputs) != 1:
        raise ValueError(f"the video signature should take one input (images), it takes {len(frozen.inputs)}")
    return frozen, frozen.graph.as_graph_def()


def _rewrite(graph_def, preserve: list[str], precision: str):
    """Grappler's mixed-precision rewrite of `graph_def`, leaving the `preserve` nodes as they are."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.graph_def.CopyFrom(graph_def)
    # Grappler never rewrites the nodes it must preserve (the fetches); it inserts casts around them.
    fetches = meta_graph_pb2.CollectionDef()
    fetches.node_list.value.extend(preserve)
    meta_graph.collection_def["train_op"].CopyFrom(fetches)
    config = config_pb2.ConfigProto()
    setattr(config.graph_options.rewrite_options, _REWRITES[precision], rewriter_config_pb2.RewriterConfig.ON)
    # With Grappler's default pipeline around it (as measured in BENCHMARKS.md). Freezing and
    # rewriting cost a worker about 10 s and 0.9 GB of peak memory at load, once.
    return tf_optimizer.OptimizeGraph(config, meta_graph)


def _callable(graph_def, frozen, structured_outputs):
    """`images` -> the signature's dict, computed by `graph_def` (whose nodes are named like `frozen`'s)."""
    import tensorflow as tf

    def import_graph():
        tf.graph_util.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    names = tf.nest.pack_sequence_as(structured_outputs, [t.name for t in frozen.outputs], expand_composites=False)
    pruned = wrapped.prune(
        feeds=[wrapped.graph.get_tensor_by_name(frozen.inputs[0].name)],
        fetches={key: wrapped.graph.get_tensor_by_name(name) for key, name in names.items()},
    )

    def video(images):
        return pruned(images)

    video.graph_def = graph_def  # for inspection and tests
    return video


def lower_video_signature(signature, precision: str, keep: Callable[[Any], list[str]] = keep_float32):
    """The `video` signature rewritten to run in `precision`; returns (callable, LoweringReport).

    The callable takes `images=` (float32 [B, T, H, W, 3]) and returns the same dict of
    float32 tensors as the signature. `keep` names the ops to leave in float32.
    """
    check_precision(precision)
    if precision == "float32":
        raise ValueError("float32 is the module's own signature; there is nothing to lower")
    frozen, graph_def = _freeze(signature)
    kept = keep(graph_def)
    rewritten = _rewrite(graph_def, [t.name for t in frozen.outputs] + kept, precision)
    dtypes = op_dtypes(rewritten)
    report = LoweringReport(
        precision=precision,
        lowered_ops=dtypes.get(precision, 0),
        float_ops=dtypes.get("float32", 0) + dtypes.get(precision, 0),
        kept_float32=tuple(kept),
    )
    return _callable(rewritten, frozen, signature.structured_outputs), report


def describe(report: LoweringReport) -> str:
    """One line for the log: what runs in which precision."""
    kept = ", ".join(report.kept_float32) or "nothing"
    return (f"video tower in {report.precision}: {report.lowered_ops} of {report.float_ops} float ops lowered; kept "
            f"in float32 on purpose: {kept}; the text tower stays float32")


def op_dtypes(graph_def) -> dict[str, int]:
    """How many ops of the graph compute in each dtype (by their T attribute): for tests and inspection."""
    counts: dict[str, int] = defaultdict(int)
    for n in graph_def.node:
        if n.op != "Const" and "T" in n.attr:
            counts[_DTYPE_NAMES.get(n.attr["T"].type, "other")] += 1
    return dict(counts)
