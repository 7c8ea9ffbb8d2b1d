#!/usr/bin/env python3
"""Convert a TensorFlow.js graph model (model.json + weight shards) to ONNX.

Generic form of nanodet_tfjs_to_onnx.py, whose attribute patching it reuses:
TFJS files written by an older TensorFlow omit node attributes that still had
their default value, and TF 2.15's importer (used by tf2onnx) needs them all,
so every missing attribute that has a default in TF's op registry is filled
in (plus `TArgs` for `_FusedConv2D`). Graphs that need no patching are left
as they are (the patch then adds nothing). Optionally keeps only some outputs
(tf2onnx's --outputs), which prunes the graph to what they need.

Usage: tfjs_to_onnx.py MODEL.json OUT.onnx [--outputs NAME[,NAME...]]
(the weight files named in the json's weightsManifest must sit next to it)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

# Importing it imports tensorflow, which registers all ops.
from nanodet_tfjs_to_onnx import OPSET, fill_missing_attrs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src_json")
    ap.add_argument("out_onnx")
    ap.add_argument("--outputs", help="comma-separated graph outputs to keep (default: the signature's)")
    args = ap.parse_args()

    with open(args.src_json) as f:
        graph = json.load(f)
    added = fill_missing_attrs(graph)
    print(f"filled {added} missing node attributes", file=sys.stderr)

    # tf2onnx resolves the weight files relative to the json, so write the
    # (possibly patched) json into a scratch dir next to copies of the shards.
    src_dir = os.path.dirname(os.path.abspath(args.src_json))
    with tempfile.TemporaryDirectory() as tmp:
        for group in graph["weightsManifest"]:
            for p in group["paths"]:
                shutil.copy(os.path.join(src_dir, p), os.path.join(tmp, p))
        patched = os.path.join(tmp, "model.json")
        with open(patched, "w") as f:
            json.dump(graph, f)
        cmd = [sys.executable, "-m", "tf2onnx.convert", "--tfjs", patched,
               "--output", args.out_onnx, "--opset", str(OPSET)]
        if args.outputs:
            cmd += ["--outputs", args.outputs]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
