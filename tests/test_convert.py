"""The checkpoint converter against an independent PyTorch implementation of the spec.

A random PyTorch S3D (tests/torch_reference.py) is saved with the exact key layout of the
checkpoint (docs/model.md, "Checkpoint layout"), converted, loaded through load_s3d, and
compared on video and text.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the converter tests need the convert extra (make test installs it)")

from torch_reference import S3D, randomized  # noqa: E402

from s3d.convert import ConversionError, convert, main, to_tensorflow  # noqa: E402
from s3d.vocab import synthetic_vocabulary  # noqa: E402

WORDS = synthetic_vocabulary(600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    model = randomized(S3D(WORDS), seed=0)
    d = tmp_path_factory.mktemp("torch")
    checkpoint = str(d / "s3d_howto100m.pth")
    torch.save(model.state_dict(), checkpoint)
    vocab = str(d / "s3d_dict.npy")
    np.save(vocab, np.array(WORDS, dtype=object), allow_pickle=True)
    output = str(d / "converted")
    provenance = convert(checkpoint, vocab, output)
    return {"model": model, "checkpoint": checkpoint, "vocab": vocab, "output": output, "provenance": provenance}


@pytest.fixture(scope="module")
def converted(reference):
    """The converted model loaded once, as a job loads it (the extraction test below reuses it)."""
    from s3d.loader import load_once

    return load_once(reference["output"], "float32")


def test_reference_state_dict_has_the_checkpoint_layout(reference):
    layout_path = os.path.join(os.path.dirname(__file__), "..", "s3d", "state_dict_layout.json")
    with open(layout_path) as f:
        layout = json.load(f)
    state = reference["model"].state_dict()
    assert list(state) == [e["key"] for e in layout]
    for entry in layout:
        shape = list(state[entry["key"]].shape)
        if entry["key"] == "text_module.word_embd.weight":
            assert shape == [len(WORDS) + 1, 300]
        else:
            assert shape == entry["shape"], entry["key"]


# Batches of 2, where a mix-up of a batch's clips would show; the job's own size (32 frames, 224x224),
# which costs 2.5 to 8 times a clip of the others, as one clip.
@pytest.mark.parametrize("t,size,batch", [(16, 200, 2), (32, 224, 1), (16, 112, 2)])
def test_converted_video_tower_matches_the_reference(reference, converted, t, size, batch):
    rng = np.random.default_rng(t + size)
    clip = rng.uniform(0, 1, (batch, t, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        ref_mixed, ref_emb = reference["model"].forward_video(torch.from_numpy(clip).permute(0, 4, 1, 2, 3).contiguous())
    mixed, emb = converted.embed_video(clip)
    for got, want in ((mixed, ref_mixed.numpy()), (emb, ref_emb.numpy())):
        scale = np.abs(want).max()
        assert scale > 1e-3
        assert np.abs(got - want).max() / scale < 1e-4


def test_converted_text_tower_matches_the_reference(reference, converted):
    sentences = ["Cut the tomato", "tok00042 TOK00007 and the onion!", "", "unknown words only", "a " * 30]
    with torch.no_grad():
        want = reference["model"].text_module(sentences).numpy()
    got = converted.embed_text(sentences)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_provenance_says_converted_and_from_which_file(reference, converted):
    model = converted
    p = model.provenance
    assert p["kind"] == "converted" and p["trained"] is True and model.trained
    assert p["source_checkpoint"] == "s3d_howto100m.pth" and len(p["checkpoint_sha256"]) == 64
    assert p["vocab_size"] == len(WORDS)


def test_inspect_prints_signatures_provenance_and_parameters(reference, capsys):
    from s3d import inspect

    assert inspect.main([reference["output"]]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["signatures"]) == ["text", "video"]
    assert report["provenance"]["kind"] == "converted"
    learned = sum(p.numel() for p in reference["model"].parameters())
    assert report["parameters"] == learned
    counts = report["variables"]
    assert counts["fine_tunable"]
    assert counts["video"]["trainable_parameters"] + counts["text"]["trainable_parameters"] == learned, counts
    bn_count = sum(1 for k in reference["model"].state_dict() if k.endswith("running_mean"))
    assert counts["video"]["non_trainable_variables"] == 2 * bn_count  # running means and variances
    assert counts["text"]["non_trainable_variables"] == 0


def test_a_converted_checkpoint_is_fine_tunable(reference, standin_dir):
    """The converter writes through the stand-in's own save_model: the same trainable and non-trainable
    variables (names, shapes, dtypes) as the stand-in, whose training through hub.KerasLayer is tested in
    tests/test_reusable.py, with the checkpoint's values in them (a gradient step here would cost ~15 s)."""
    from s3d.quiet import import_tensorflow_hub

    hub = import_tensorflow_hub()
    converted, standin = hub.load(reference["output"]), hub.load(standin_dir)

    def layout(variables):
        return sorted((v.name, tuple(v.shape), v.dtype.name) for v in variables)

    assert layout(converted.trainable_variables) == layout(standin.trainable_variables)
    assert len(converted.trainable_variables) > 50
    trainable = {v.name for v in converted.trainable_variables}
    assert layout(v for v in converted.variables if v.name not in trainable) == \
        layout(v for v in standin.variables if v.name not in {w.name for w in standin.trainable_variables})
    conv1 = next(v for v in converted.trainable_variables if "conv1/weight" in v.name)
    stand_in_conv1 = next(v for v in standin.trainable_variables if "conv1/weight" in v.name)
    assert not np.array_equal(conv1.numpy(), stand_in_conv1.numpy())  # the checkpoint's values, not the seed's


def test_strictness_names_the_bad_tensor(reference):
    state = {k: v.numpy() for k, v in reference["model"].state_dict().items()}
    missing = dict(state)
    del missing["mixed_4c.conv_b1_b.conv2.weight"]
    with pytest.raises(ConversionError, match=r"missing tensors: mixed_4c\.conv_b1_b\.conv2\.weight"):
        to_tensorflow(missing, len(WORDS))
    extra = dict(state, **{"head.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match=r"unexpected tensors: head\.extra\.weight"):
        to_tensorflow(extra, len(WORDS))
    bad = dict(state, **{"fc.weight": np.zeros((512, 1000), np.float32)})
    with pytest.raises(ConversionError, match=r"fc\.weight has shape \(512, 1000\), expected \(512, 1024\)"):
        to_tensorflow(bad, len(WORDS))
    no_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(to_tensorflow(no_counters, len(WORDS))) == len(no_counters)
    with pytest.raises(ConversionError, match="vocabulary has 599 words but .* 601 rows"):
        to_tensorflow(state, len(WORDS) - 1)


def test_cli_refuses_a_wrong_vocabulary(reference, tmp_path, capsys):
    short = str(tmp_path / "short.npy")
    np.save(short, np.array(WORDS[:10], dtype=object), allow_pickle=True)
    assert main(["--checkpoint", reference["checkpoint"], "--vocab", short, "--output", str(tmp_path / "o")]) == 2
    assert "vocabulary has 10 words" in capsys.readouterr().err


def test_extraction_job_runs_unchanged_on_a_converted_model(reference, tmp_path):
    from pipeline import extract
    from synthetic.videos import write_video

    video = write_video(str(tmp_path / "v.mp4"), 20, fps=10)
    prefix = str(tmp_path / "out")
    args = ["--input", video, "--output_prefix", prefix, "--model", reference["output"], "--size", "64",
            "--frames_per_clip", "16"]
    assert extract.main(args) == 0
    import pyarrow.dataset as ds

    assert ds.dataset(os.path.join(prefix, "videos")).to_table().num_rows == 1
