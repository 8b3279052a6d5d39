"""One model copy per GPU: slot claims across copies and processes, and placement, with fake devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from s3d.devices import claim_gpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPUS = ["/device:GPU:0", "/device:GPU:1"]


def test_copies_in_one_process_take_different_gpus_then_share(tmp_path, caplog):
    first, second = claim_gpu(GPUS, str(tmp_path)), claim_gpu(GPUS, str(tmp_path))
    assert (first.device, second.device) == tuple(GPUS) and not first.shared and not second.shared
    third = claim_gpu(GPUS, str(tmp_path))
    assert third.shared and third.device in GPUS
    assert "more model copies than GPUs" in caplog.text
    first.release()
    again = claim_gpu(GPUS, str(tmp_path))
    assert again.device == GPUS[0] and not again.shared  # a released slot is free again
    for claim in (second, third, again):
        claim.release()


def test_no_gpu_means_no_pinning(tmp_path):
    assert claim_gpu([], str(tmp_path)) is None


def test_a_copy_in_another_process_holds_its_slot(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from s3d.devices import claim_gpu
            claim = claim_gpu({GPUS!r}, {str(tmp_path)!r})
            print(claim.device, flush=True)
            sys.stdin.read()  # hold the claim until told to stop
        """)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == GPUS[0]
        mine = claim_gpu(GPUS, str(tmp_path))
        assert mine.device == GPUS[1]
        mine.release()
    finally:
        holder.communicate("", timeout=60)
    after = claim_gpu(GPUS, str(tmp_path))  # the holder's process ended: its slot is free
    assert after.device == GPUS[0]
    after.release()


def test_two_copies_load_onto_their_own_device(standin_dir, tmp_path):
    """Two logical CPU devices stand in for two GPUs: each loaded copy's variables sit on its own."""
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import s3d.devices, s3d.loader
        s3d.devices.DEFAULT_LOCK_DIR = {str(tmp_path)!r}
        fakes = [d.name for d in tf.config.list_logical_devices("CPU")]
        s3d.loader.visible_gpus = lambda: fakes
        s3d.loader.claim_gpu = lambda gpus: s3d.devices.claim_gpu(gpus, {str(tmp_path)!r})
        a, b = s3d.loader.load_s3d({standin_dir!r}), s3d.loader.load_s3d({standin_dir!r})
        print(a.device.device, b.device.device)
        print(sorted({{v.device for v in a._video.variables}}), sorted({{v.device for v in b._video.variables}}))
        clip = np.random.default_rng(0).integers(0, 255, (1, 16, 112, 112, 3), dtype=np.uint8)
        print(np.allclose(a.embed_video(clip)[1], b.embed_video(clip)[1], atol=1e-5))
        from tensorflow.python.eager import context
        cast_devices, real_cast = [], tf.cast
        tf.cast = lambda x, dtype, name=None: cast_devices.append(context.context().device_name) or real_cast(x, dtype)
        b.embed_video(clip)  # the uint8 -> float32 cast runs inside the copy's placement too
        print(cast_devices)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    devices, placements, same, casts = proc.stdout.strip().splitlines()[-4:]
    assert devices.split() == ["/device:CPU:0", "/device:CPU:1"]
    a_places, b_places = placements.split("] [")
    assert "CPU:0" in a_places and "CPU:1" not in a_places
    assert "CPU:1" in b_places and "CPU:0" not in b_places
    assert same == "True"
    assert "CPU:1" in casts and "CPU:0" not in casts, casts
