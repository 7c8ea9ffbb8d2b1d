#!/usr/bin/env python3
"""Check the three swap-in detectors with ONNX Runtime and write reference detections.

Runs with onnxruntime==1.32.0 (the version of the libonnxruntime the Rust side
loads), numpy and Pillow. For each model it prints the exact input/output
names, dtypes and shapes (dynamic dims by their symbolic name), the file size
and sha256, and the median latency with 1 intra-op thread; then it decodes the
model's output on each image with plain numpy and writes
  OUT_DIR/<model>_<image stem>.json
  = {"model", "image", "image_width", "image_height",
     "detections": [{"class": COCO name, "score", "bbox": [x1,y1,x2,y2]}]}
with bbox in ORIGINAL image pixels (not clipped), sorted by score descending.
It fails loudly if a model does not have the documented inputs and outputs.

Pre-processing (the Rust side must do the same to reproduce the numbers):
  every model: decode with Pillow, convert("RGB"), Image.resize((S, S), BILINEAR)
  i.e. STRETCH (aspect not kept; Pillow's bilinear is antialiased when shrinking),
  NHWC, batch 1.
  centernet-mnv3-512: S=512, float32 0..255 (no normalisation).
  ssdlite-mobilenetv2-coco, pedestrian-ssdlite: S=300, uint8.
Decoding:
  centernet: rows [x1,y1,x2,y2,score,class] in 512-input pixels; drop rows with
    a non-finite value; keep score >= 0.3; class-agnostic greedy NMS IoU 0.5;
    class = 0-based COCO-80 index.
  ssdlite: score = max over the 90 columns (sigmoid already applied), class =
    COCO category id = column + 1; keep score >= 0.4; boxes [ymin,xmin,ymax,xmax]
    normalised; class-agnostic greedy NMS IoU 0.5.
  pedestrian: the first int(num_detections) rows, keep score >= 0.4 (NMS is in
    the graph); boxes [ymin,xmin,ymax,xmax] normalised; class 1 = person.
  NMS: sort by score (stable), keep a box unless its IoU (areas (x2-x1)*(y2-y1),
    no +1) with an already kept box is > 0.5; done in model-input coordinates.
  Mapping back: x * W / S, y * H / S (normalised: x * W, y * H).

Usage: check_detectors.py MODELS_DIR OUT_DIR IMAGE...   (IMAGE: jpg or png)
"""
import hashlib
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

# The same JSON layout as the constructed fixtures (this directory is on sys.path when run).
from make_decoder_graphs import write_json

COCO80 = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
# The 90-id COCO category map of the TF Object Detection API: ids 1..90, ten of them unused.
COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_ID_TO_NAME = dict(zip([i for i in range(1, 91) if i not in COCO_UNUSED_IDS], COCO80))

IOU_THR = 0.5
LATENCY_RUNS = 20

# name -> (file, input size, input dtype, expected inputs, expected outputs)
# Expected shapes: None = a dynamic dim (any symbolic name).
MODELS = {
    "centernet-mnv3-512": dict(
        size=512, dtype=np.float32,
        inputs={"tower_0/images:0": ("tensor(float)", [1, 512, 512, 3])},
        outputs={"tower_0/detections": ("tensor(float)", [1, 100, 6])}),
    "ssdlite-mobilenetv2-coco": dict(
        size=300, dtype=np.uint8,
        inputs={"image_tensor:0": ("tensor(uint8)", [None, None, None, 3])},
        outputs={"Postprocessor/Slice:0": ("tensor(float)", [None, None, None]),
                 "Postprocessor/ExpandDims_1:0": ("tensor(float)", [None, None, 1, None])}),
    "pedestrian-ssdlite": dict(
        size=300, dtype=np.uint8,
        inputs={"image_tensor:0": ("tensor(uint8)", [None, None, None, 3])},
        outputs={"detection_boxes:0": ("tensor(float)", [None, None, None]),
                 "detection_scores:0": ("tensor(float)", [None, None]),
                 "detection_classes:0": ("tensor(float)", [None, None]),
                 "num_detections:0": ("tensor(float)", [None])}),
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def check_io(name, sess, spec):
    def matches(shape, want):
        return len(shape) == len(want) and all(
            (w is None and not isinstance(s, int)) or s == w for s, w in zip(shape, want))

    for kind, got, want in (("input", sess.get_inputs(), spec["inputs"]),
                            ("output", sess.get_outputs(), spec["outputs"])):
        names = [a.name for a in got]
        if names != list(want):
            sys.exit(f"{name}: {kind} names {names}, expected {list(want)}")
        for a in got:
            wtype, wshape = want[a.name]
            if a.type != wtype or not matches(a.shape, wshape):
                sys.exit(f"{name}: {kind} {a.name} is {a.type} {a.shape}, expected {wtype} {wshape}")


def preprocess(img, size, dtype):
    x = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return x.astype(dtype)[None]  # [1, S, S, 3] NHWC RGB


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(dets):
    """dets: list of (score, class, box); class-agnostic greedy NMS."""
    kept = []
    for d in sorted(dets, key=lambda d: -d[0]):
        if all(iou(d[2], k[2]) <= IOU_THR for k in kept):
            kept.append(d)
    return kept


def decode_centernet(out, w, h, s):
    rows = out["tower_0/detections"][0].astype(np.float64)
    dets = []
    for r in rows:
        if not np.all(np.isfinite(r)) or r[4] < 0.3:
            continue
        dets.append((float(r[4]), COCO80[int(r[5])], [float(v) for v in r[:4]]))
    return [(sc, c, [b[0] * w / s, b[1] * h / s, b[2] * w / s, b[3] * h / s])
            for sc, c, b in nms(dets)]


def yxyx_norm_to_xyxy(b, w, h):
    return [float(b[1]) * w, float(b[0]) * h, float(b[3]) * w, float(b[2]) * h]


def decode_ssdlite(out, w, h, s):
    scores = out["Postprocessor/Slice:0"][0].astype(np.float64)          # [1917, 90]
    boxes = out["Postprocessor/ExpandDims_1:0"][0, :, 0].astype(np.float64)  # [1917, 4]
    best, col = scores.max(axis=1), scores.argmax(axis=1)
    dets = []
    for i in np.nonzero(best >= 0.4)[0]:
        cid = int(col[i]) + 1
        if cid not in COCO_ID_TO_NAME:
            sys.exit(f"ssdlite: detection with unused COCO id {cid}")
        # NMS in normalised input coordinates, boxes as x1,y1,x2,y2.
        b = boxes[i]
        dets.append((float(best[i]), COCO_ID_TO_NAME[cid], [b[1], b[0], b[3], b[2]]))
    return [(sc, c, [b[0] * w, b[1] * h, b[2] * w, b[3] * h]) for sc, c, b in nms(dets)]


def decode_pedestrian(out, w, h, s):
    n = int(out["num_detections:0"][0])
    dets = []
    for i in range(n):
        sc = float(out["detection_scores:0"][0, i])
        cls = int(out["detection_classes:0"][0, i])
        if cls != 1:
            sys.exit(f"pedestrian: class {cls}, expected always 1")
        if sc >= 0.4:
            dets.append((sc, "person", yxyx_norm_to_xyxy(out["detection_boxes:0"][0, i], w, h)))
    return sorted(dets, key=lambda d: -d[0])


DECODERS = {"centernet-mnv3-512": decode_centernet,
            "ssdlite-mobilenetv2-coco": decode_ssdlite,
            "pedestrian-ssdlite": decode_pedestrian}


def main():
    models_dir, out_dir, images = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("# Reference detections of the swap-in detectors on real images\n\n"
                "Written by `scripts/convert-detectors.sh` (`scripts/convert/check_detectors.py`, "
                f"onnxruntime {ort.__version__}, numpy {np.__version__}, Pillow {Image.__version__}); "
                "do not edit.\n\nImages (Debian package darknet, /usr/share/darknet/data/):\n\n")
        for p in images:
            with Image.open(p) as im:
                f.write(f"- {os.path.basename(p)}: {im.size[0]}x{im.size[1]}, sha256 {sha256(p)}\n")
        doc = __doc__[__doc__.index("Pre-processing"):__doc__.index("Usage:")].rstrip()
        f.write("\n```\n" + doc + "\n```\n")
    for name, spec in MODELS.items():
        path = os.path.join(models_dir, name + ".onnx")
        sess = session(path)
        check_io(name, sess, spec)
        print(f"\n## {name}: models/{name}.onnx, {os.path.getsize(path)} bytes, sha256 {sha256(path)}")
        for a in sess.get_inputs():
            print(f"  input  {a.name!r} {a.type} {a.shape}")
        for a in sess.get_outputs():
            print(f"  output {a.name!r} {a.type} {a.shape}")
        out_names = [a.name for a in sess.get_outputs()]
        in_name = sess.get_inputs()[0].name
        for img_path in images:
            img = Image.open(img_path).convert("RGB")
            w, h = img.size
            x = preprocess(img, spec["size"], spec["dtype"])
            out = dict(zip(out_names, sess.run(None, {in_name: x})))
            print(f"  {os.path.basename(img_path)} ({w}x{h}): output shapes "
                  + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()))
            dets = DECODERS[name](out, w, h, spec["size"])
            doc = {"model": name, "image": os.path.basename(img_path),
                   "image_width": w, "image_height": h,
                   "detections": [{"class": c, "score": round(sc, 6),
                                   "bbox": [round(v, 3) for v in b]} for sc, c, b in dets]}
            stem = os.path.splitext(os.path.basename(img_path))[0]
            write_json(os.path.join(out_dir, f"{name}_{stem}.json"), doc)
            for d in doc["detections"]:
                print(f"    {d['class']:<14} {d['score']:.3f}  [" +
                      ", ".join(f"{v:.1f}" for v in d["bbox"]) + "]")
        # Latency: the first image, one warm-up run, then LATENCY_RUNS timed runs.
        x = preprocess(Image.open(images[0]).convert("RGB"), spec["size"], spec["dtype"])
        sess.run(None, {in_name: x})
        times = []
        for _ in range(LATENCY_RUNS):
            t0 = time.perf_counter()
            sess.run(None, {in_name: x})
            times.append((time.perf_counter() - t0) * 1000)
        print(f"  latency: median {statistics.median(times):.1f} ms over {LATENCY_RUNS} runs "
              f"(1 intra-op thread; min {min(times):.1f}, max {max(times):.1f})")


if __name__ == "__main__":
    main()
