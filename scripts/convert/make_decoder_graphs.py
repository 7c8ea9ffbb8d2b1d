#!/usr/bin/env python3
"""Build tiny ONNX detectors in the YOLO-family and SSD output layouts, for decoder tests.

No YOLO weights can be had here (see shared models notes), so each graph is
made with onnx.helper: constant "raw head" tensors (what the convolutions of a
real detector would produce) go through the same ONNX ops a real export uses
(Sigmoid, Exp, grid Add, stride Mul, Reshape/Transpose/Concat, TopK, Gather...)
and the graph depends on its input trivially (0 * ReduceMean(images) is added)
so the output cannot be constant-folded away. The raw heads are made from a
designed scene, the same in every case (64x64 input, classes car, person,
bicycle; boxes in input pixels x1,y1,x2,y2):

  A   car      0.92 [ 6,  8, 26, 24]  true object
  B   person   0.85 [38, 30, 52, 58]  true object, well away from A
  C1  bicycle  0.80 [ 8, 38, 28, 58]  true object
  C2  bicycle  0.65 [11.5,38,31.5,58] IoU 0.70 with C1, same class: NMS drops it
  D   person   0.70 [2.5, 8, 22.5,24] IoU 0.70 with A, other class: per-class
                                      NMS keeps it, class-agnostic NMS drops it
  E   car      0.39 [44,  4, 60, 20]  just below the 0.4 threshold: dropped
  + every other cell/prior: background, best score <= ~0.1.

Writes OUT_DIR/<case>/{model.onnx, model.toml, expected.json} (+ priors.safetensors
for ssd-priors) and OUT_DIR/README.md. expected.json holds the detections of an
independent numpy reference: a numpy forward of the raw heads (not ONNX) and a
decoder driven by the model.toml it writes (score threshold 0.4, greedy NMS IoU
0.5 as the case says). Then it runs every model.onnx with onnxruntime, checks
the output shapes, decodes the real ORT output with the same reference decoder
and fails unless it equals expected.json (scores within 1e-5, boxes within 1e-3 px).

Deterministic: fixed seeds, fixed node names, so a re-run gives identical bytes
(given the pinned onnx/numpy versions of scripts/convert-detectors.sh).

Usage: make_decoder_graphs.py OUT_DIR        (e.g. tests/fixtures/decoders)
Needs: onnx, numpy, and onnxruntime for the check.
"""
import json
import math
import os
import struct
import sys
import tomllib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

W = H = 64
CLASSES = ["car", "person", "bicycle"]
STRIDES = [8, 16, 32]
SCORE_THR = 0.4
IOU_THR = 0.5
OPSET = 13
IR_VERSION = 8

# name, class index, score, box x1,y1,x2,y2 (input pixels), stride level used by grid heads
SCENE = [
    ("A", 0, 0.92, [6.0, 8.0, 26.0, 24.0], 8),
    ("B", 1, 0.85, [38.0, 30.0, 52.0, 58.0], 16),
    ("C1", 2, 0.80, [8.0, 38.0, 28.0, 58.0], 8),
    ("C2", 2, 0.65, [11.5, 38.0, 31.5, 58.0], 16),
    ("D", 1, 0.70, [2.5, 8.0, 22.5, 24.0], 8),
    ("E", 0, 0.39, [44.0, 4.0, 60.0, 20.0], 32),
]
KEPT_PER_CLASS = ["A", "B", "C1", "D"]
KEPT_AGNOSTIC = ["A", "B", "C1"]

MANIFEST_HEAD = """\
[model]
id = "{id}"
version = "1.0.0"
file = "model.onnx"
description = "constructed by scripts/convert/make_decoder_graphs.py: {desc}"
license = "MIT"

[input]
name = "images"
layout = "nchw"
width = 64
height = 64
channels = "rgb"
resize = "stretch"
pixel_scale = 0.00392156862745098

[decoder]
kind = "{kind}"
class_names = ["car", "person", "bicycle"]
score_threshold = 0.4
nms = "{nms}"
nms_iou_threshold = 0.5
max_detections = 100
"""


# ---------------------------------------------------------------------------
# small numeric helpers
def f32(x):
    return np.asarray(x, dtype=np.float32)


def logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p / (1.0 - p))


def sigmoid32(x):
    x = f32(x)
    return f32(1.0 / (1.0 + np.exp(-x.astype(np.float64))))


def cxcywh(box):
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def grid_cells():
    """(stride, x, y) for every cell, ordered by stride then row-major."""
    return [(s, x, y) for s in STRIDES for y in range(H // s) for x in range(W // s)]


def cell_index(stride, cx, cy):
    cells = grid_cells()
    i = cells.index((stride, int(cx // stride), int(cy // stride)))
    return i


def scene_cells():
    idx = {}
    for name, _, _, box, s in SCENE:
        cx, cy, _, _ = cxcywh(box)
        idx[name] = cell_index(s, cx, cy)
    assert len(set(idx.values())) == len(idx), "two scene objects share a cell"
    return idx


# ---------------------------------------------------------------------------
# ONNX graph building
class G:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, array, name=None):
        self.n += 1
        name = name or f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, out=None, **attrs):
        self.n += 1
        out = out or f"t{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self.n}", **attrs))
        return out

    def zero(self):
        """0 * mean(images): a scalar 0.0 that depends on the input."""
        m = self.op("ReduceMean", ["images"], axes=[0, 1, 2, 3], keepdims=0)
        return self.op("Mul", [m, self.const(f32(0.0))])

    def slice(self, x, start, end, axis):
        return self.op("Slice", [x, self.const(np.array([start], np.int64)),
                                 self.const(np.array([end], np.int64)),
                                 self.const(np.array([axis], np.int64))])

    def reshape(self, x, shape):
        return self.op("Reshape", [x, self.const(np.array(shape, np.int64))])

    def model(self, outputs):
        graph = helper.make_graph(
            self.nodes, "decoder_fixture",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, H, W])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="make_decoder_graphs.py", producer_version="1")
        m.ir_version = IR_VERSION
        onnx.checker.check_model(m)
        return m


def per_level(raw_cells, channels):
    """Split a [Ncells, C] array into NCHW conv maps [1, C, gh, gw], one per stride."""
    maps, i = [], 0
    for s in STRIDES:
        g = W // s
        maps.append(f32(raw_cells[i:i + g * g].reshape(g, g, channels).transpose(2, 0, 1)[None]))
        i += g * g
    return maps


# ---------------------------------------------------------------------------
# cases: each returns (onnx model, {output name: numpy forward}, manifest keys, expected kept names)
def case_yolov8_columns(rng, nan=False):
    cells = grid_cells()
    n = len(cells)
    dist = rng.uniform(0.3, 1.5, (n, 4))            # l, t, r, b in grid units (after DFL)
    cls = logit(rng.uniform(0.0005, 0.1, (n, 3)))    # class logits
    for name, c, score, box, s in SCENE:
        i = scene_cells()[name]
        _, x, y = cells[i]
        ax, ay = x + 0.5, y + 0.5
        d = [ax - box[0] / s, ay - box[1] / s, box[2] / s - ax, box[3] / s - ay]
        assert min(d) >= 0, (name, d)
        dist[i] = d
        cls[i] = logit([0.01, 0.01, 0.01])
        cls[i, c] = logit(score)
    anchors = f32([[x + 0.5 for _, x, _ in cells], [y + 0.5 for _, _, y in cells]])[None]  # [1,2,N]
    strides = f32([s for s, _, _ in cells])[None, None]                                   # [1,1,N]
    dmaps, cmaps = per_level(dist, 4), per_level(cls, 3)

    g = G()
    z = g.zero()
    d = g.op("Concat", [g.reshape(g.const(m), [1, 4, -1]) for m in dmaps], axis=2)
    c = g.op("Concat", [g.reshape(g.const(m), [1, 3, -1]) for m in cmaps], axis=2)
    d = g.op("Add", [d, z])
    lt, rb = g.slice(d, 0, 2, 1), g.slice(d, 2, 4, 1)
    a = g.const(anchors, "anchor_points")
    x1y1, x2y2 = g.op("Sub", [a, lt]), g.op("Add", [a, rb])
    ctr = g.op("Mul", [g.op("Add", [x1y1, x2y2]), g.const(f32(0.5))])
    wh = g.op("Sub", [x2y2, x1y1])
    box = g.op("Mul", [g.op("Concat", [ctr, wh], axis=1), g.const(strides, "stride_tensor")])
    out = "output0"
    if nan:
        pre = g.op("Concat", [box, g.op("Sigmoid", [c])], axis=1)
        g.op("Add", [pre, g.op("Div", [z, z])], out=out)  # 0/0 = NaN everywhere
    else:
        g.op("Concat", [box, g.op("Sigmoid", [c])], axis=1, out=out)
    model = g.model([(out, [1, 7, n])])

    # numpy forward
    D = np.concatenate([m.reshape(1, 4, -1) for m in dmaps], 2)
    C = np.concatenate([m.reshape(1, 3, -1) for m in cmaps], 2)
    X1, X2 = anchors - D[:, :2], anchors + D[:, 2:]
    fwd = np.concatenate([f32((X1 + X2) * f32(0.5)) * strides, (X2 - X1) * strides, sigmoid32(C)], 1)
    if nan:
        fwd = np.full_like(fwd, np.nan)
    keys = dict(output=out, orientation="columns", objectness=False, sigmoid=False, box="cxcywh")
    return model, {out: f32(fwd)}, keys, [1, 7, n]


def case_yolov5_rows(rng):
    cells = grid_cells()
    n = len(cells)
    anchor_wh = {8: (10.0, 13.0), 16: (30.0, 61.0), 32: (116.0, 90.0)}  # YOLOv5s, first anchor per level
    sig = np.empty((n, 8))
    sig[:, 0:2] = rng.uniform(0.2, 0.8, (n, 2))
    sig[:, 2:4] = rng.uniform(0.2, 0.6, (n, 2))
    sig[:, 4] = rng.uniform(0.001, 0.1, n)
    sig[:, 5:8] = rng.uniform(0.001, 0.3, (n, 3))
    for name, c, score, box, s in SCENE:
        i = scene_cells()[name]
        _, x, y = cells[i]
        cx, cy, w, h = cxcywh(box)
        aw, ah = anchor_wh[s]
        sig[i, 0:2] = [(cx / s - x + 0.5) / 2, (cy / s - y + 0.5) / 2]
        sig[i, 2:4] = [math.sqrt(w / aw) / 2, math.sqrt(h / ah) / 2]
        sig[i, 4] = 0.95
        sig[i, 5:8] = 0.01
        sig[i, 5 + c] = score / 0.95
    assert sig.min() > 0 and sig.max() < 1
    raw = logit(sig)
    grid = f32([[x - 0.5, y - 0.5] for _, x, y in cells])[None]           # [1,N,2]
    stride = f32([[s] for s, _, _ in cells])[None]                          # [1,N,1]
    anchors = f32([anchor_wh[s] for s, _, _ in cells])[None]                # [1,N,2]
    maps = per_level(raw, 8)  # conv output [1, na*(5+nc), gh, gw], na = 1

    g = G()
    z = g.zero()
    parts = []
    for m in maps:
        gh, gw = m.shape[2], m.shape[3]
        t = g.reshape(g.const(m), [1, 1, 8, gh, gw])                 # [bs, na, no, ny, nx]
        t = g.op("Transpose", [t], perm=[0, 1, 3, 4, 2])             # [bs, na, ny, nx, no]
        parts.append(g.reshape(t, [1, -1, 8]))
    t = g.op("Sigmoid", [g.op("Add", [g.op("Concat", parts, axis=1), z])])
    xy, wh, conf = g.slice(t, 0, 2, 2), g.slice(t, 2, 4, 2), g.slice(t, 4, 8, 2)
    two = g.const(f32(2.0))
    xy = g.op("Mul", [g.op("Add", [g.op("Mul", [xy, two]), g.const(grid, "grid")]), g.const(stride, "stride")])
    wh2 = g.op("Mul", [wh, two])
    wh = g.op("Mul", [g.op("Mul", [wh2, wh2]), g.const(anchors, "anchor_grid")])
    out = "output0"
    g.op("Concat", [xy, wh, conf], axis=2, out=out)
    model = g.model([(out, [1, n, 8])])

    R = np.concatenate([m.transpose(0, 2, 3, 1).reshape(1, -1, 8) for m in maps], 1)
    S = sigmoid32(R)
    XY = f32(S[..., 0:2] * 2 + grid) * stride
    WH = f32(S[..., 2:4] * 2) ** 2 * anchors
    fwd = np.concatenate([XY, WH, S[..., 4:8]], 2)
    keys = dict(output=out, orientation="rows", objectness=True, sigmoid=False, box="cxcywh")
    return model, {out: f32(fwd)}, keys, [1, n, 8]


def case_yolox_raw(rng):
    cells = grid_cells()
    n = len(cells)
    raw = np.empty((n, 8))
    raw[:, 0:2] = rng.uniform(0.1, 0.9, (n, 2))
    raw[:, 2:4] = rng.uniform(-0.5, 1.0, (n, 2))
    raw[:, 4] = logit(rng.uniform(0.001, 0.1, n))
    raw[:, 5:8] = logit(rng.uniform(0.001, 0.3, (n, 3)))
    for name, c, score, box, s in SCENE:
        i = scene_cells()[name]
        _, x, y = cells[i]
        cx, cy, w, h = cxcywh(box)
        raw[i, 0:4] = [cx / s - x, cy / s - y, math.log(w / s), math.log(h / s)]
        raw[i, 4] = logit(0.95)
        raw[i, 5:8] = logit(0.01)
        raw[i, 5 + c] = logit(score / 0.95)
    reg, obj, cls = per_level(raw[:, 0:4], 4), per_level(raw[:, 4:5], 1), per_level(raw[:, 5:8], 3)

    g = G()
    z = g.zero()
    parts = []
    for r, o, c in zip(reg, obj, cls):
        t = g.op("Concat", [g.const(r), g.const(o), g.const(c)], axis=1)  # [1, 8, gh, gw]
        parts.append(g.reshape(t, [1, 8, -1]))
    t = g.op("Add", [g.op("Concat", parts, axis=2), z])
    out = "output"
    g.op("Transpose", [t], perm=[0, 2, 1], out=out)
    model = g.model([(out, [1, n, 8])])

    fwd = np.concatenate([np.concatenate([r, o, c], 1).reshape(1, 8, -1) for r, o, c in zip(reg, obj, cls)], 2)
    fwd = fwd.transpose(0, 2, 1)
    keys = dict(output=out, orientation="rows", objectness=True, sigmoid=True, box="cxcywh",
                grid_strides=STRIDES)
    return model, {out: f32(fwd)}, keys, [1, n, 8]


def ssd_priors(anchors_per_cell):
    """SSD priors (cx, cy, w, h) normalised: level, then cell row-major, then anchor."""
    scales = {8: 0.25, 16: 0.45, 32: 0.8}
    pri = []
    for s, x, y in grid_cells():
        g = W // s
        for k in range(anchors_per_cell):
            ar = [1.0, 2.0][k]  # width : height
            pri.append([(x + 0.5) / g, (y + 0.5) / g, scales[s] * math.sqrt(ar), scales[s] / math.sqrt(ar)])
    return f32(pri)


def write_safetensors(path, tensors):
    """safetensors by hand: u64 LE header length, JSON header padded with spaces to 8 bytes, LE data."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        blob = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        assert t["dtype"] == "F32"
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], "<f4").reshape(t["shape"])
    return out


def case_ssd_priors(rng):
    A = 2
    pri = ssd_priors(A).astype(np.float64)
    n = len(pri)
    off = np.empty((n, 4))                        # (dy, dx, dh, dw)
    off[:, 0:2] = rng.normal(0.0, 1.0, (n, 2))
    off[:, 2:4] = rng.normal(0.0, 0.5, (n, 2))
    probs = np.empty((n, 4))                      # background, car, person, bicycle
    probs[:, 1:] = rng.uniform(0.0005, 0.05, (n, 3))
    cells = scene_cells()
    for name, c, score, box, s in SCENE:
        i = cells[name] * A                      # anchor 0 of the object's cell
        cx, cy, w, h = (v / W for v in cxcywh(box))
        pcx, pcy, pw, ph = pri[i]
        off[i] = [(cy - pcy) / (0.1 * ph), (cx - pcx) / (0.1 * pw), math.log(h / ph) / 0.2,
                  math.log(w / pw) / 0.2]
        probs[i, 1:] = 0.005
        probs[i, 1 + c] = score
    probs[:, 0] = 1.0 - probs[:, 1:].sum(1)
    logits = np.log(probs) + rng.uniform(-2.0, 2.0, (n, 1))  # softmax does not see the shift

    # conv outputs [1, A*4, gh, gw], channel = anchor*4 + k, as SSD heads lay them out
    def maps_of(per_prior):
        return per_level(per_prior.reshape(-1, A * 4), A * 4)
    omaps, smaps = maps_of(off), maps_of(logits)

    g = G()
    z = g.zero()
    outs = {}
    for name, maps in (("boxes", omaps), ("scores", smaps)):
        parts = [g.reshape(g.op("Transpose", [g.const(m)], perm=[0, 2, 3, 1]), [1, -1, 4]) for m in maps]
        g.op("Add", [g.op("Concat", parts, axis=1), z], out=name)
        outs[name] = f32(np.concatenate([m.transpose(0, 2, 3, 1).reshape(1, -1, 4) for m in maps], 1))
    model = g.model([("boxes", [1, n, 4]), ("scores", [1, n, 4])])
    keys = dict(boxes="boxes", scores="scores", box_order="yxyx", coordinates="normalized",
                activation="softmax", background_column=0, priors="priors.safetensors",
                prior_variances=[0.1, 0.1, 0.2, 0.2])
    return model, outs, keys, {"boxes": [1, n, 4], "scores": [1, n, 4]}, {"priors.safetensors": pri}


def case_boxes_scores_plain(rng):
    # TF Object Detection API style: box encodings (ty, tx, th, tw) decoded in the graph against
    # anchors (ya, xa, ha, wa) with scale factors 10, 10, 5, 5; sigmoid on class logits.
    pri = ssd_priors(1).astype(np.float64)           # cx, cy, w, h
    n = len(pri)
    enc = np.empty((n, 4))
    enc[:, 0:2] = rng.normal(0.0, 1.0, (n, 2))
    enc[:, 2:4] = rng.normal(0.0, 1.0, (n, 2))
    cls = logit(rng.uniform(0.0005, 0.1, (n, 3)))
    cells = scene_cells()
    for name, c, score, box, s in SCENE:
        i = cells[name]
        cx, cy, w, h = (v / W for v in cxcywh(box))
        xa, ya, wa, ha = pri[i]
        enc[i] = [(cy - ya) / ha * 10, (cx - xa) / wa * 10, math.log(h / ha) * 5, math.log(w / wa) * 5]
        cls[i] = logit(0.01)
        cls[i, c] = logit(score)
    emaps, cmaps = per_level(enc, 4), per_level(cls, 3)
    ya, xa, ha, wa = (f32(pri[:, k])[None, :, None] for k in (1, 0, 3, 2))

    g = G()
    z = g.zero()

    def flat(maps, ch):
        return g.op("Concat", [g.reshape(g.op("Transpose", [g.const(m)], perm=[0, 2, 3, 1]), [1, -1, ch])
                               for m in maps], axis=1)
    e = g.op("Add", [flat(emaps, 4), z])
    ty, tx, th, tw = (g.slice(e, k, k + 1, 2) for k in range(4))
    yc = g.op("Add", [g.op("Mul", [g.op("Div", [ty, g.const(f32(10.0))]), g.const(ha)]), g.const(ya)])
    xc = g.op("Add", [g.op("Mul", [g.op("Div", [tx, g.const(f32(10.0))]), g.const(wa)]), g.const(xa)])
    hh = g.op("Mul", [g.op("Exp", [g.op("Div", [th, g.const(f32(5.0))])]), g.const(ha)])
    ww = g.op("Mul", [g.op("Exp", [g.op("Div", [tw, g.const(f32(5.0))])]), g.const(wa)])
    half = g.const(f32(0.5))
    hh2, ww2 = g.op("Mul", [hh, half]), g.op("Mul", [ww, half])
    yxyx = g.op("Concat", [g.op("Sub", [yc, hh2]), g.op("Sub", [xc, ww2]),
                           g.op("Add", [yc, hh2]), g.op("Add", [xc, ww2])], axis=2)
    g.op("Unsqueeze", [yxyx, g.const(np.array([2], np.int64))], out="boxes")
    g.op("Sigmoid", [g.op("Add", [flat(cmaps, 3), z])], out="scores")
    model = g.model([("boxes", [1, n, 1, 4]), ("scores", [1, n, 3])])

    E = np.concatenate([m.transpose(0, 2, 3, 1).reshape(1, -1, 4) for m in emaps], 1)
    C = np.concatenate([m.transpose(0, 2, 3, 1).reshape(1, -1, 3) for m in cmaps], 1)
    YC = f32(E[..., 0:1] / f32(10) * ha) + ya
    XC = f32(E[..., 1:2] / f32(10) * wa) + xa
    HH = f32(np.exp((E[..., 2:3] / f32(5)).astype(np.float64))) * ha * f32(0.5)
    WW = f32(np.exp((E[..., 3:4] / f32(5)).astype(np.float64))) * wa * f32(0.5)
    boxes = np.concatenate([YC - HH, XC - WW, YC + HH, XC + WW], 2)[:, :, None, :]
    outs = {"boxes": f32(boxes), "scores": sigmoid32(C)}
    keys = dict(boxes="boxes", scores="scores", box_order="yxyx", coordinates="normalized",
                activation="none")
    return model, outs, keys, {"boxes": [1, n, 1, 4], "scores": [1, n, 3]}


def case_detections_rows(rng):
    # CenterNet style: heatmap (stride 4) -> sigmoid -> TopK over class*cell -> gather size and
    # offset -> rows [x1, y1, x2, y2, score, class]; rows scoring < 0.05 are zeroed (padding).
    S, G_, K = 4, W // 4, 10
    heat = logit(rng.uniform(0.0005, 0.03, (3, G_, G_)))
    wh = rng.uniform(4.0, 20.0, (2, G_, G_))
    off = rng.uniform(0.0, 1.0, (2, G_, G_))
    objs = [(name, c, score, box) for name, c, score, box, _ in SCENE]
    a = next(o for o in objs if o[0] == "A")
    objs.append(("A2", 2, 0.60, a[3]))  # A's box again as bicycle: IoU 1.0 with A
    for name, c, score, box in objs:
        cx, cy, w, h = cxcywh(box)
        x, y = int(cx // S), int(cy // S)
        heat[c, y, x] = logit(score)
        wh[:, y, x] = [w, h]
        off[:, y, x] = [cx / S - x, cy / S - y]
    heat, wh, off = f32(heat)[None], f32(wh)[None], f32(off)[None]
    cells = G_ * G_

    g = G()
    z = g.zero()
    hm = g.op("Sigmoid", [g.op("Add", [g.const(heat, "heatmap_logits"), z])])
    flat = g.reshape(hm, [1, -1])
    vals, idx = f"topk_values", f"topk_indices"
    g.nodes.append(helper.make_node("TopK", [flat, g.const(np.array([K], np.int64))], [vals, idx],
                                    name="TopK", axis=1, largest=1, sorted=1))
    ncell = g.const(np.array(cells, np.int64))
    cls = g.op("Div", [idx, ncell])
    cell = g.op("Mod", [idx, ncell])
    gw = g.const(np.array(G_, np.int64))
    ys = g.op("Cast", [g.op("Div", [cell, gw])], to=TensorProto.FLOAT)
    xs = g.op("Cast", [g.op("Mod", [cell, gw])], to=TensorProto.FLOAT)
    whg = g.op("Gather", [g.op("Transpose", [g.reshape(g.const(wh, "wh"), [2, -1])], perm=[1, 0]), cell], axis=0)
    ofg = g.op("Gather", [g.op("Transpose", [g.reshape(g.const(off, "offset"), [2, -1])], perm=[1, 0]), cell], axis=0)
    u = g.const(np.array([2], np.int64))
    stride = g.const(f32(S))
    cx = g.op("Mul", [g.op("Add", [g.op("Unsqueeze", [xs, u]), g.slice(ofg, 0, 1, 2)]), stride])
    cy = g.op("Mul", [g.op("Add", [g.op("Unsqueeze", [ys, u]), g.slice(ofg, 1, 2, 2)]), stride])
    half = g.const(f32(0.5))
    hw, hh = g.op("Mul", [g.slice(whg, 0, 1, 2), half]), g.op("Mul", [g.slice(whg, 1, 2, 2), half])
    rows = g.op("Concat", [g.op("Sub", [cx, hw]), g.op("Sub", [cy, hh]), g.op("Add", [cx, hw]),
                           g.op("Add", [cy, hh]), g.op("Unsqueeze", [vals, u]),
                           g.op("Unsqueeze", [g.op("Cast", [cls], to=TensorProto.FLOAT), u])], axis=2)
    keep = g.op("Cast", [g.op("Greater", [vals, g.const(f32(0.05))])], to=TensorProto.FLOAT)
    g.op("Mul", [rows, g.op("Unsqueeze", [keep, u])], out="detections")
    model = g.model([("detections", [1, K, 6])])

    hs = sigmoid32(heat).reshape(-1)
    top = np.argsort(-hs, kind="stable")[:K]
    V, C, CELL = hs[top], top // cells, top % cells
    X, Y = f32(CELL % G_), f32(CELL // G_)
    WH = wh.reshape(2, -1).T[CELL]
    OF = off.reshape(2, -1).T[CELL]
    CX, CY = (X + OF[:, 0]) * f32(S), (Y + OF[:, 1]) * f32(S)
    HW, HH = WH[:, 0] * f32(0.5), WH[:, 1] * f32(0.5)
    R = np.stack([CX - HW, CY - HH, CX + HW, CY + HH, V, f32(C)], 1) * f32(V > 0.05)[:, None]
    assert (R[7:] == 0).all() and (R[:7, 4] > 0.3).all()
    keys = dict(output="detections", columns=["x1", "y1", "x2", "y2", "score", "class"], coordinates="pixels")
    return model, {"detections": f32(R[None])}, keys, {"detections": [1, K, 6]}


def case_detections_tf(rng):
    # TF OD API post-processed outputs: boxes [1,K,4] yxyx normalised, scores [1,K],
    # classes [1,K] float (1-based ids), num_detections [1]. Rows past the count are garbage.
    K, count = 10, 5
    rows = [(c, score, box) for name, c, score, box, _ in SCENE if name != "C2"]  # NMS already done
    assert len(rows) == count
    for _ in range(K - count):
        x1, y1 = rng.uniform(0, 40, 2)
        rows.append((int(rng.integers(0, 7)), float(rng.uniform(0.95, 0.99)),
                     [x1, y1, x1 + rng.uniform(5, 24), y1 + rng.uniform(5, 24)]))
    boxes_px = f32([r[2] for r in rows])[None]
    score_logits = f32(logit([r[1] for r in rows]))[None]
    class_idx = np.array([[r[0] for r in rows]], np.int64)
    valid = f32([[1.0] * count + [0.0] * (K - count)])

    g = G()
    z = g.zero()
    b = g.op("Add", [g.const(boxes_px, "boxes_px"), z])
    b = g.op("Gather", [b, g.const(np.array([1, 0, 3, 2], np.int64))], axis=2)
    g.op("Div", [b, g.const(f32([H, W, H, W]))], out="detection_boxes")
    g.op("Sigmoid", [g.const(score_logits, "score_logits")], out="detection_scores")
    g.op("Cast", [g.op("Add", [g.const(class_idx, "class_index"), g.const(np.array(1, np.int64))])],
         to=TensorProto.FLOAT, out="detection_classes")
    g.op("ReduceSum", [g.const(valid, "valid"), g.const(np.array([1], np.int64))], out="num_detections",
         keepdims=0)
    model = g.model([("detection_boxes", [1, K, 4]), ("detection_scores", [1, K]),
                     ("detection_classes", [1, K]), ("num_detections", [1])])
    outs = {"detection_boxes": f32(boxes_px[..., [1, 0, 3, 2]] / f32([H, W, H, W])),
            "detection_scores": sigmoid32(score_logits),
            "detection_classes": f32(class_idx + 1),
            "num_detections": valid.sum(1)}
    keys = dict(boxes="detection_boxes", scores="detection_scores", classes="detection_classes",
                count="num_detections", box_order="yxyx", coordinates="normalized", class_ids=[1, 2, 3])
    return model, outs, keys, {k: list(v.shape) for k, v in outs.items()}


# (case, kind, nms, description, builder, kept scene objects)
CASES = [
    ("yolov8-columns", "yolo", "per-class",
     "YOLOv8 (Ultralytics anchor-free) export, [1, 4+3, N] columns, cxcywh pixels decoded in graph, "
     "sigmoid applied, no objectness; N = 84 (strides 8, 16, 32)",
     case_yolov8_columns, KEPT_PER_CLASS),
    ("yolov5-rows", "yolo", "per-class",
     "YOLOv5 export, [1, N, 5+3] rows, cxcywh pixels decoded in graph (grid, anchors), "
     "objectness, sigmoid applied; N = 84, one anchor per cell",
     case_yolov5_rows, KEPT_PER_CLASS),
    ("yolox-raw", "yolo", "per-class",
     "YOLOX raw head (decode_in_inference off), [1, N, 5+3] rows of logits, grid strides 8, 16, 32",
     case_yolox_raw, KEPT_PER_CLASS),
    ("ssd-priors", "boxes-scores", "per-class",
     "SSD head: prior offsets [1, N, 4] (dy, dx, dh, dw) and logits [1, N, 1+3] with background column 0; "
     "N = 168 priors in priors.safetensors",
     case_ssd_priors, KEPT_PER_CLASS),
    ("boxes-scores-plain", "boxes-scores", "class-agnostic",
     "TF OD API before NMS (like coco-ssd): boxes [1, N, 1, 4] yxyx normalised decoded in graph, "
     "sigmoid scores [1, N, 3]",
     case_boxes_scores_plain, KEPT_AGNOSTIC),
    ("detections-rows-duplicates", "detections", "class-agnostic",
     "CenterNet-style rows [1, 10, 6] x1,y1,x2,y2,score,class in pixels from TopK over a heatmap; "
     "one box emitted as car and bicycle; zero rows as padding",
     case_detections_rows, KEPT_AGNOSTIC),
    ("detections-tf", "detections", "none",
     "TF OD API post-processed outputs: boxes [1, 10, 4] yxyx normalised, scores, classes (1-based, float), "
     "num_detections = 5 with garbage rows after it",
     case_detections_tf, ["A", "B", "C1", "D"]),
    ("nan-output", "yolo", "per-class",
     "the yolov8-columns graph with NaN added to every output value (a broken model)",
     lambda rng: case_yolov8_columns(rng, nan=True), []),
]


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


def manifest(case, kind, nms, desc, keys):
    text = MANIFEST_HEAD.format(id=case, desc=desc, kind=kind, nms=nms)
    text += "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())
    return text


# ---------------------------------------------------------------------------
# reference decoder, driven only by the manifest and the model's outputs
def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sig64(x):
    return 1.0 / (1.0 + np.exp(-x))


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def to_xyxy(b, order):
    """b: [n, 4] in the given order -> [n, 4] x1, y1, x2, y2."""
    if order == "xyxy":
        return b.copy()
    if order == "yxyx":
        return b[:, [1, 0, 3, 2]]
    if order == "cxcywh":
        return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2,
                         b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    raise ValueError(order)


def class_lookup(dec, n_columns=None):
    """model value -> index into class_names."""
    ids = dec.get("class_ids", list(range(len(dec["class_names"]))))
    return {int(v): i for i, v in enumerate(ids)}


def decode(manifest_path, outputs):
    man = tomllib.load(open(manifest_path, "rb"))
    dec, inp = man["decoder"], man["input"]
    w, h = inp["width"], inp["height"]
    lut = class_lookup(dec)
    cands = []  # (score, class index, [x1, y1, x2, y2] input pixels)
    kind = dec["kind"]
    if kind == "yolo":
        t = outputs[dec["output"]][0].astype(np.float64)
        rows = t.T if dec["orientation"] == "columns" else t
        box = rows[:, 0:4]
        if dec["objectness"]:
            obj, cls = rows[:, 4], rows[:, 5:]
        else:
            obj, cls = None, rows[:, 4:]
        if dec["sigmoid"]:
            cls = sig64(cls)
            obj = None if obj is None else sig64(obj)
        scores = cls * obj[:, None] if obj is not None else cls
        strides = dec.get("grid_strides", [])
        if strides:
            cells = [(s, x, y) for s in strides for y in range(h // s) for x in range(w // s)]
            assert len(cells) == len(rows)
            s = np.array([c[0] for c in cells], float)
            gx = np.array([c[1] for c in cells], float)
            gy = np.array([c[2] for c in cells], float)
            box = np.stack([(box[:, 0] + gx) * s, (box[:, 1] + gy) * s,
                            np.exp(box[:, 2]) * s, np.exp(box[:, 3]) * s], 1)
        xyxy = to_xyxy(box, dec["box"])
        for i in range(len(rows)):
            col = int(np.argmax(scores[i]))
            if col in lut and scores[i, col] >= dec["score_threshold"]:
                cands.append((float(scores[i, col]), lut[col], xyxy[i].tolist()))
    elif kind == "boxes-scores":
        b = outputs[dec["boxes"]][0].astype(np.float64).reshape(-1, 4)
        sc = outputs[dec["scores"]][0].astype(np.float64)
        act = dec["activation"]
        sc = softmax(sc) if act == "softmax" else sig64(sc) if act == "sigmoid" else sc
        if "background_column" in dec:
            sc = np.delete(sc, dec["background_column"], axis=1)
        if "priors" in dec:
            pri = read_safetensors(os.path.join(os.path.dirname(manifest_path), dec["priors"]))["priors"]
            pri = pri.astype(np.float64)
            v = dec["prior_variances"]
            if dec["box_order"] == "yxyx":
                dy, dx, dh, dw = b.T
            elif dec["box_order"] == "xyxy":
                dx, dy, dw, dh = b.T
            else:
                raise ValueError("priors need box_order xyxy or yxyx")
            cx = pri[:, 0] + dx * v[0] * pri[:, 2]
            cy = pri[:, 1] + dy * v[1] * pri[:, 3]
            bw = pri[:, 2] * np.exp(dw * v[2])
            bh = pri[:, 3] * np.exp(dh * v[3])
            xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        else:
            xyxy = to_xyxy(b, dec["box_order"])
        if dec["coordinates"] == "normalized":
            xyxy = xyxy * [w, h, w, h]
        for i in range(len(sc)):
            col = int(np.argmax(sc[i]))
            if col in lut and sc[i, col] >= dec["score_threshold"]:
                cands.append((float(sc[i, col]), lut[col], xyxy[i].tolist()))
    elif kind == "detections":
        if "output" in dec:
            t = outputs[dec["output"]][0].astype(np.float64)
            col = {name: j for j, name in enumerate(dec["columns"])}
            xyxy = t[:, [col["x1"], col["y1"], col["x2"], col["y2"]]]
            scores = t[:, col["score"]]
            classes = t[:, col["class"]] if "class" in col else np.zeros(len(t))
        else:
            xyxy = to_xyxy(outputs[dec["boxes"]][0].astype(np.float64), dec["box_order"])
            scores = outputs[dec["scores"]][0].astype(np.float64)
            classes = (outputs[dec["classes"]][0].astype(np.float64) if "classes" in dec
                       else np.zeros(len(scores)))
        n = len(scores)
        if "count" in dec:
            n = min(n, int(outputs[dec["count"]].reshape(-1)[0]))
        if dec.get("coordinates", "pixels") == "normalized":
            xyxy = xyxy * [w, h, w, h]
        for i in range(n):
            if not np.isfinite(classes[i]):
                continue
            cv = int(round(classes[i]))
            if cv in lut and scores[i] >= dec["score_threshold"]:
                cands.append((float(scores[i]), lut[cv], xyxy[i].tolist()))
    else:
        raise ValueError(kind)

    cands = [c for c in cands if np.all(np.isfinite(c[2])) and np.isfinite(c[0])]
    cands.sort(key=lambda c: -c[0])
    kept = []
    for c in cands:
        rivals = kept if dec["nms"] == "class-agnostic" else [k for k in kept if k[1] == c[1]] \
            if dec["nms"] == "per-class" else []
        if all(iou(c[2], k[2]) <= dec["nms_iou_threshold"] for k in rivals):
            kept.append(c)
    kept = kept[:dec["max_detections"]]
    return [{"class_id": c, "score": round(s, 6), "bbox": [round(v, 4) for v in b]} for s, c, b in kept]


def write_json(path, doc):
    """JSON with one detection per line (readable diffs), keys in the order given."""
    parts = []
    for k, v in doc.items():
        if k == "detections":
            body = ",\n".join("  " + json.dumps(d) for d in v)
            parts.append(' "detections": [' + ("\n" + body + "\n ]" if v else "]"))
        else:
            parts.append(f" {json.dumps(k)}: {json.dumps(v)}")
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(parts) + "\n}\n")


def same(a, b):
    return len(a) == len(b) and all(
        x["class_id"] == y["class_id"] and abs(x["score"] - y["score"]) <= 1e-5
        and max(abs(p - q) for p, q in zip(x["bbox"], y["bbox"])) <= 1e-3 for x, y in zip(a, b))


# ---------------------------------------------------------------------------
def main():
    out_dir = sys.argv[1]
    import onnxruntime as ort  # only for the check

    scene = {name: (c, score, box) for name, c, score, box, _ in SCENE}
    summary = []
    for k, (case, kind, nms, desc, build, kept_names) in enumerate(CASES):
        rng = np.random.default_rng(20240600 + k)
        res = build(rng)
        model, fwd, keys, shapes = res[0], res[1], res[2], res[3]
        extra = res[4] if len(res) > 4 else {}
        if not isinstance(shapes, dict):
            shapes = {next(iter(fwd)): shapes}
        d = os.path.join(out_dir, case)
        os.makedirs(d, exist_ok=True)
        onnx.save(model, os.path.join(d, "model.onnx"))
        for fname, arr in extra.items():
            write_safetensors(os.path.join(d, fname), {"priors": arr})
        with open(os.path.join(d, "model.toml"), "w") as f:
            f.write(manifest(case, kind, nms, desc, keys))

        # expected: numpy forward + reference decode
        dets = decode(os.path.join(d, "model.toml"), fwd)
        want = sorted(([scene[n][0], scene[n][1], scene[n][2]] for n in kept_names), key=lambda x: -x[1])
        if len(dets) != len(want) or not all(
                x["class_id"] == c and abs(x["score"] - s) < 1e-4
                and max(abs(p - q) for p, q in zip(x["bbox"], b)) < 1e-3 for x, (c, s, b) in zip(dets, want)):
            sys.exit(f"{case}: reference decode {dets} is not the designed scene {want}")
        doc = {"input_width": W, "input_height": H}
        if case == "nan-output":
            doc["note"] = "all NaN"
        doc["detections"] = dets
        write_json(os.path.join(d, "expected.json"), doc)

        # check with onnxruntime: shapes, and the decode of the real output
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(os.path.join(d, "model.onnx"), so, providers=["CPUExecutionProvider"])
        img = np.random.default_rng(7).uniform(0, 1, (1, 3, H, W)).astype(np.float32)
        names = [o.name for o in sess.get_outputs()]
        got = dict(zip(names, sess.run(None, {"images": img})))
        for name, shape in shapes.items():
            if list(got[name].shape) != list(shape):
                sys.exit(f"{case}: ORT output {name} has shape {list(got[name].shape)}, expected {shape}")
        if case == "nan-output":
            if not all(np.isnan(v).all() for v in got.values()):
                sys.exit(f"{case}: ORT output is not all NaN")
        else:
            for name in fwd:
                err = float(np.abs(got[name].astype(np.float64) - fwd[name]).max())
                if err > 1e-4:
                    sys.exit(f"{case}: ORT output {name} differs from the numpy forward by {err}")
        ort_dets = decode(os.path.join(d, "model.toml"), got)
        if not same(ort_dets, dets):
            sys.exit(f"{case}: decode of ORT output {ort_dets} != expected {dets}")
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        summary.append(f"{case:<28} {', '.join(f'{n} {s}' for n, s in shapes.items())}; "
                       f"{len(dets)} detections; {size} bytes")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(README)
    print("\n".join(summary))
    print(f"all {len(CASES)} cases: ORT output decodes to expected.json")


README = """\
# Decoder fixtures

Written by `scripts/convert/make_decoder_graphs.py` (run by `scripts/convert-detectors.sh`); do not edit.

Each `<case>/` has `model.onnx` (input `images` float32 [1,3,64,64] NCHW; the output does not
depend on the pixel values), `model.toml` (the model manifest) and `expected.json` (the detections,
in 64x64 input pixels, sorted by score descending, of an independent numpy reference decode).
Every case shows the same scene, classes ["car", "person", "bicycle"]:

| obj | class   | score | box x1,y1,x2,y2   | what it tests |
|-----|---------|-------|-------------------|---------------|
| A   | car     | 0.92  | 6, 8, 26, 24      | a true object |
| B   | person  | 0.85  | 38, 30, 52, 58    | a second true object, well apart |
| C1  | bicycle | 0.80  | 8, 38, 28, 58     | a true object |
| C2  | bicycle | 0.65  | 11.5, 38, 31.5, 58| IoU 0.70 with C1, same class: NMS drops it |
| D   | person  | 0.70  | 2.5, 8, 22.5, 24  | IoU 0.70 with A, other class: kept by per-class NMS, dropped by class-agnostic |
| E   | car     | 0.39  | 44, 4, 60, 20     | just under score_threshold 0.4: dropped |

All other cells/priors are background (best score about 0.1 or less).
Expected: per-class NMS -> A, B, C1, D; class-agnostic -> A, B, C1.

| case | layout |
|------|--------|
| yolov8-columns | `output0` [1,7,84]: cx,cy,w,h (pixels), 3 sigmoid scores; columns; anchor-free grid decoded in graph |
| yolov5-rows | `output0` [1,84,8]: cx,cy,w,h, objectness, 3 scores, all sigmoid; score = obj * cls |
| yolox-raw | `output` [1,84,8] raw logits; decoder applies the grid (strides 8,16,32), exp, sigmoid |
| ssd-priors | `boxes` [1,168,4] offsets (dy,dx,dh,dw), `scores` [1,168,4] logits, softmax, background column 0; priors.safetensors [168,4] (cx,cy,w,h) normalised, variances 0.1,0.1,0.2,0.2 |
| boxes-scores-plain | `boxes` [1,84,1,4] ymin,xmin,ymax,xmax normalised, `scores` [1,84,3] sigmoid applied; class-agnostic NMS |
| detections-rows-duplicates | `detections` [1,10,6] x1,y1,x2,y2,score,class (0-based, float) pixels; A's box also as bicycle 0.60 (IoU 1.0); rows 7..9 all zero; class-agnostic NMS |
| detections-tf | `detection_boxes` [1,10,4] yxyx normalised, `detection_scores` [1,10], `detection_classes` [1,10] float 1..3 (`class_ids = [1, 2, 3]`), `num_detections` [1] = 5; rows 5..9 are garbage scoring 0.95-0.99 (some with class values outside the map); nms none (no C2 in this case: a post-NMS output) |
| nan-output | the yolov8-columns graph with every output value NaN; expected: no detections |

Decode conventions of the reference: score = best class score (times objectness where there is
one); a row whose best column is not in the class map is dropped; greedy NMS sorted by score,
a box is dropped when its IoU (areas (x2-x1)*(y2-y1), no +1) with a kept box is > 0.5
(per-class: only boxes of the same class count); then at most max_detections. Boxes are not
clipped. ORT's output matches the numpy forward to 1e-4 and decodes to expected.json (scores
within 1e-5, boxes within 1e-3 px).
"""

if __name__ == "__main__":
    main()
