"""Static int8 quantisation (QDQ) of a detector with ONNX Runtime's quantisation tool.

Calibration inputs come pre-processed by the node itself (`cargo bench --bench detector_int8 --
--write-calibration DIR`: the node's ingest stage and `fill_input`, with the f32 manifest's input
spec), so the ranges are those of the tensors the node will feed. The input name, size and layout
are read from the manifest, never assumed.

    quantize_detector.py MANIFEST CALIBRATION_DIR OUTPUT [options]

The defaults are the options that gave the committed models/nanodet-g-416-int8.onnx; the others
are kept to repeat the comparison in benches/results/detector-int8.md.
"""

import argparse
import os
import sys
import tempfile
import tomllib

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process


class Frames(CalibrationDataReader):
    """The calibration tensors listed in DIR/frames.tsv, one [1, ...] input each."""

    def __init__(self, directory, input_name, shape):
        with open(os.path.join(directory, "frames.tsv"), encoding="utf-8") as f:
            rows = [line.rstrip("\n").split("\t") for line in f][1:]
        self.files = [os.path.join(directory, row[2]) for row in rows]
        self.input_name = input_name
        self.shape = shape
        self.rewind()

    def rewind(self):
        self.iterator = iter(self.files)

    def get_next(self):
        path = next(self.iterator, None)
        if path is None:
            return None
        data = np.fromfile(path, dtype="<f4").reshape(self.shape)
        return {self.input_name: data}


def fold_pads_into_maxpool(model):
    """Pad(value -inf) -> MaxPool becomes MaxPool with `pads`: the same function, since MaxPool's
    own padding never wins the max. Left as a Pad, its -inf would be calibrated into a range of
    (-inf, x] and give an infinite scale: quantised, the stem's MaxPool and the Conv after it
    compute nothing useful.
    """
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    folded = []
    for pad in list(model.graph.node):
        if pad.op_type != "Pad" or len(pad.input) < 3 or pad.input[1] not in init or pad.input[2] not in init:
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        if mode != b"constant" or not np.all(np.isneginf(init[pad.input[2]])):
            continue
        users = consumers.get(pad.output[0], [])
        pads = init[pad.input[1]].astype(int).tolist()
        rank = len(pads) // 2
        if len(users) != 1 or users[0].op_type != "MaxPool" or any(pads[i] or pads[rank + i] for i in range(2)):
            continue
        pool = users[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
        if attrs.get("auto_pad", b"NOTSET") != b"NOTSET" or any(attrs.get("pads", [])):
            continue
        spatial = pads[2:rank] + pads[rank + 2 :]
        for a in list(pool.attribute):
            if a.name == "pads":
                pool.attribute.remove(a)
        pool.attribute.append(onnx.helper.make_attribute("pads", spatial))
        pool.input[0] = pad.input[0]
        model.graph.node.remove(pad)
        folded.append(pad.name)
    used = {i for n in model.graph.node for i in n.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    return folded


def head_nodes(model, outputs, stop_op="Conv"):
    """The last node of `stop_op` on the path to each of `outputs`, and every node after it.

    The detector's head ends in a Conv per level whose output is split into class logits and box
    distributions, then sigmoid/reshape/transpose: these are what decide scores and box edges.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    found, tail = set(), set()
    for name in outputs:
        node = producer.get(name)
        while node is not None:
            if node.op_type == stop_op:
                found.add(node.name)
                break
            tail.add(node.name)
            node = producer.get(node.input[0]) if node.input else None
    return sorted(found), sorted(tail)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", help="the f32 model's manifest (TOML)")
    p.add_argument("calibration", help="directory written by --write-calibration")
    p.add_argument("output", help="the int8 ONNX file to write")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--percentile", type=float, default=99.999)
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--activations", choices=["uint8", "int8"], default="uint8")
    p.add_argument(
        "--exclude-head",
        choices=["none", "sigmoid", "tail", "convs"],
        # Scores move half as much with the head's last convs in float (median |difference| to f32
        # 0.015 against 0.041) for 3 % more bytes: benches/results/detector-int8.md.
        default="convs",
        help="keep in float: nothing; the sigmoids; everything after the last convs; the last convs too",
    )
    p.add_argument("--exclude-nodes", default="", help="more nodes to keep in float, comma-separated names")
    p.add_argument(
        "--pre-process", action=argparse.BooleanOptionalAction, default=True, help="quant_pre_process first"
    )
    args = p.parse_args()

    with open(args.manifest, "rb") as f:
        manifest = tomllib.load(f)
    spec = manifest["input"]
    if spec.get("max_batch", 1) != 1:
        sys.exit("a detector manifest has max_batch 1")
    shape = (
        (1, 3, spec["height"], spec["width"])
        if spec["layout"] == "nchw"
        else (1, spec["height"], spec["width"], 3)
    )
    model_path = os.path.join(os.path.dirname(args.manifest), manifest["model"]["file"])
    decoder = manifest["decoder"]
    outputs = list(decoder["score_outputs"]) + list(decoder["box_outputs"])

    with tempfile.TemporaryDirectory() as tmp:
        source = model_path
        if args.pre_process:
            # Symbolic shape inference plus ORT's basic optimisations (this folds the separate Pad
            # nodes tf2onnx emits into their Conv): the quantiser then sees one Conv, not Pad+Conv,
            # and every tensor has a known shape.
            source = os.path.join(tmp, "pre.onnx")
            quant_pre_process(model_path, source, skip_symbolic_shape=False)
        model = onnx.load(source)
        folded = fold_pads_into_maxpool(model)
        if folded:
            print(f"folded into MaxPool: {folded}")
            source = os.path.join(tmp, "folded.onnx")
            onnx.save(model, source)
        convs, tail = head_nodes(model, outputs)
        exclude = []
        if args.exclude_head == "sigmoid":
            exclude = [n.name for n in model.graph.node if n.name in tail and n.op_type == "Sigmoid"]
        elif args.exclude_head == "tail":
            exclude = tail
        elif args.exclude_head == "convs":
            exclude = tail + convs
        exclude += [n for n in args.exclude_nodes.split(",") if n]
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[args.method]
        extra = {
            # Ranges merged every 16 frames: the same result with bounded memory.
            "CalibMaxIntermediateOutputs": 16,
        }
        if args.method == "percentile":
            extra["CalibPercentile"] = args.percentile
        reader = Frames(args.calibration, spec["name"], shape)
        print(
            f"quantising {source} on {len(reader.files)} frames: {args.method}, "
            f"per_channel={args.per_channel}, activations {args.activations}, exclude {exclude or 'nothing'}",
            flush=True,
        )
        quantize_static(
            source,
            args.output,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=args.per_channel,
            # This box's CPU has VNNI (no 7-bit weights needed); ORT's guidance for x86 is u8
            # activations with s8 weights.
            reduce_range=False,
            activation_type=QuantType.QUInt8 if args.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=method,
            extra_options=extra,
        )
    # The node refuses a model whose inputs or outputs are not float32: QDQ keeps float I/O.
    quantised = onnx.load(args.output)
    for value in list(quantised.graph.input) + list(quantised.graph.output):
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            sys.exit(f"{value.name} is not float32 in {args.output}")
    print(f"wrote {args.output} ({os.path.getsize(args.output)} B)")


if __name__ == "__main__":
    main()
