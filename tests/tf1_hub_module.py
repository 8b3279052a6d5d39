"""Writes a module in the legacy TF1 Hub format, the format the published deepmind/mil-nce/s3d/1 ships in.

A TF1 Hub module is a TF1 SavedModel with one MetaGraph per graph variant (tags `set()` for
inference, `{"train"}` for fine-tuning: BatchNorm on batch statistics), signature defs
`video` (input `images`) and `text` (input `words`), table initializers run at load, and a
`tfhub_module.pb` file beside `saved_model.pb` that marks the format (a `ModuleDef` proto
with format 3). It is built here with `tf.compat.v1` from the stand-in's parameters, so
the loader and the job can be proven on the format without the real module.
"""

from __future__ import annotations

import os

import numpy as np

# tensorflow_hub's ModuleDef {format: FORMAT_V3}, serialized (field 1, varint 3).
MODULE_DEF_V3 = b"\x08\x03"


def write_tf1_hub_module(path: str, params: dict[str, np.ndarray], vocabulary: list[str]) -> str:
    from s3d.network import S3DNetwork
    from s3d.quiet import import_tensorflow

    tf = import_tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        network = S3DNetwork(params, vocabulary)
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, None, 3], name="images")
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        inference = network.embed_video(images)
        training = network.embed_video(images, training=True)
        text = network.embed_text(words)
        init_tables = tf.compat.v1.tables_initializer()
        signature = tf.compat.v1.saved_model.predict_signature_def
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(init_tables)
            builder = tf.compat.v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                session, tags=[],
                signature_def_map={"video": signature({"images": images}, inference),
                                   "text": signature({"words": words}, text)},
                main_op=init_tables,
            )
            builder.add_meta_graph(
                tags=["train"],
                signature_def_map={"video": signature({"images": images}, training),
                                   "text": signature({"words": words}, text)},
            )  # the graph's main op (the table initializer) is already in it
            builder.save()
    with open(os.path.join(path, "tfhub_module.pb"), "wb") as f:
        f.write(MODULE_DEF_V3)
    return path
