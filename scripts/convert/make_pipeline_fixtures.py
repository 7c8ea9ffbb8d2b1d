#!/usr/bin/env python3
"""Independent Python reference for the node's whole pre-processing path on dog.jpg.

tests/fixtures/nanodet_dog pins the detector's *decoder* (raw outputs in, boxes out). This
fixture pins everything before it as well: decoding the JPEG, the letterbox and the crop
resize, the channel order, the normalisation and the tensor layout, for both models. The Rust
test (tests/models.rs) runs the project's own code on the same image and must reproduce it.

The resize is written here from its specification, in numpy, not ported from the Rust code:

  bilinear, pixel centres aligned: output pixel i (centre i + 0.5) samples the source at
  s = origin + (i + 0.5) / scale - 0.5, clamped to [0, size - 1], from its two neighbours
  floor(s) and floor(s) + 1 (clamped), weight s - floor(s). Two taps per axis whatever the
  scale: no antialiasing when shrinking. This is what OpenCV's INTER_LINEAR does, and what
  NanoDet's own pipeline uses.

Pillow's BILINEAR is the same filter when enlarging, and it antialiases when shrinking. So:
  - for every crop that is enlarged on both axes, the numpy crop must equal Pillow's (checked
    here, to 1e-2 of a pixel level): Pillow vouches for the sampling positions;
  - Pillow's (antialiased) embeddings are stored too, to show what the choice costs when
    shrinking, and the detections of tests/fixtures/nanodet_dog (Pillow letterbox) serve the
    same purpose for the detector.

Writes OUT_DIR/{expected.json, embeddings_bilinear.bin, embeddings_pillow.bin, README.txt}.
Runs with onnxruntime==1.32.0, numpy==2.4.6, pillow==13.0.0 (scripts/convert-models.sh).

Usage: make_pipeline_fixtures.py MODELS_DIR DOG_JPG OUT_DIR
"""
import json
import os
import sys

import numpy as np
from PIL import Image

import make_fixtures as mf

# Crops for the embedder, [x1, y1, x2, y2] in image pixels, fractional on purpose: the node
# crops at the detector's floating-point boxes. Chosen to cover enlarging, shrinking, mixed
# aspect and the image's bottom-right edge.
CROPS = [
    ("dog", [130.18, 212.47, 328.44, 537.58]),  # the dog: wider, shrunk 1.45x in height
    ("bicycle", [101.04, 114.53, 574.40, 486.13]),  # shrunk about 2x on both axes
    ("truck", [467.16, 85.69, 695.96, 171.11]),  # shrunk in width, enlarged in height
    ("handlebars", [138.52, 137.60, 256.42, 210.15]),  # enlarged on both axes
    ("face", [200.5, 220.25, 240.5, 270.25]),  # enlarged 4.5-5.6x: sampling positions show most
    ("corner", [600.25, 400.5, 768.0, 576.0]),  # touches the right and bottom edges
]
EMBED_SIZE = 224
# The threshold of tests/fixtures/nanodet_dog. On this image no object is within 0.05 of it
# (the manifest's 0.4 would be 0.012 from the truck box).
SCORE_THRESHOLD = mf.SCORE_THR

README = """\
dog.jpg through the node's whole pre-processing path, computed independently in Python.
Written by scripts/convert-models.sh (scripts/convert/make_pipeline_fixtures.py); do not edit.

Image: dog.jpg from Debian package darknet (scripts/setup-deps.sh puts it in .deps/media),
768x576, sha256 5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866,
decoded by Pillow 13.0.0 (libjpeg-turbo) as RGB.

Resize used for the "bilinear" results (numpy, float64, from its specification):
  output pixel i samples the source at s = origin + (i + 0.5) / scale - 0.5, clamped to
  [0, size - 1], from floor(s) and floor(s) + 1 (clamped) with weight s - floor(s);
  two taps per axis, no antialiasing (OpenCV INTER_LINEAR). Checked against Pillow's
  BILINEAR on the crops enlarged on both axes (max |difference| MAX_PIL_DIFF pixel levels).

Detector (expected.json "detector"): models/nanodet-g-416.onnx, letterbox
  scale = min(416/w, 416/h), resized size round(w*scale) x round(h*scale), image at the
  TOP-LEFT of 416x416, BGR, (x - [103.53, 116.28, 123.675]) / [57.375, 57.12, 58.395],
  pad = 0 after normalisation, NCHW; decoded exactly as tests/fixtures/nanodet_dog/README.txt
  (score >= 0.35, per-class NMS at IoU 0.5); boxes divided by the scale and clipped to the
  image: image pixels, as the node reports them. The same objects come out for any threshold
  within MARGIN of 0.35 (expected.json "threshold_margin"): a score difference smaller than
  that cannot add or drop an object.

Embedder (expected.json "embedder"): models/mobilenetv2-1280.onnx, each crop
  (x1, y1, x2 - x1, y2 - y1) stretched to 224x224 (aspect not kept), RGB, /255,
  (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], NCHW, one crop per run.
  embeddings_bilinear.bin: with the resize above; embeddings_pillow.bin: with Pillow's
  BILINEAR (antialiased when shrinking) on float images, box = the crop.
  Both little-endian float32 [crops, 1280], rows in the order of expected.json, raw model
  output (not L2-normalised).
"""


def bilinear(img, box, out_w, out_h, scale_x, scale_y):
    """The crop `box` = (x, y, w, h) of `img` (H x W x 3) resized to out_h x out_w, float64."""
    height, width = img.shape[:2]
    x, y = box[0], box[1]

    def taps(n, origin, scale, size):
        s = np.clip(origin + (np.arange(n) + 0.5) / scale - 0.5, 0, size - 1)
        lo = np.floor(s)
        return lo.astype(int), np.minimum(lo + 1, size - 1).astype(int), s - lo

    xl, xh, xw = taps(out_w, x, scale_x, width)
    yl, yh, yw = taps(out_h, y, scale_y, height)
    f = img.astype(np.float64)
    top = f[yl][:, xl] + (f[yl][:, xh] - f[yl][:, xl]) * xw[None, :, None]
    bottom = f[yh][:, xl] + (f[yh][:, xh] - f[yh][:, xl]) * xw[None, :, None]
    return top + (bottom - top) * yw[:, None, None]


def clamp_crop(box, width, height):
    """A crop box inside the image, as (x, y, w, h): the node never samples outside."""
    x = min(max(box[0], 0.0), width - 1.0)
    y = min(max(box[1], 0.0), height - 1.0)
    return x, y, max(min(box[2] - box[0], width - x), 1.0), max(min(box[3] - box[1], height - y), 1.0)


def pillow_crop(img, box):
    """Pillow's BILINEAR on float channels (no uint8 rounding), crop box in pixel coordinates."""
    return np.stack([np.asarray(Image.fromarray(img[:, :, c].astype(np.float32), "F").resize(
        (EMBED_SIZE, EMBED_SIZE), Image.BILINEAR, box=tuple(box)), np.float64) for c in range(3)], -1)


def threshold_margin(outs, dets, step=0.0005, limit=0.05):
    """How far the score threshold can move (up to `limit`) without changing the objects found:
    below, no cell that NMS would keep may appear; above, no kept object may drop out. Many
    cells score near any threshold, but most are suppressed by a better box of their object."""
    weakest = min(d["score"] for d in dets)
    kept = [(d["class_id"], d["box"]) for d in dets]
    try:
        for delta in np.arange(step, limit + step / 2, step):
            mf.SCORE_THR = SCORE_THRESHOLD - delta
            if [(d["class_id"], d["box"]) for d in mf.detect(outs)] != kept or weakest < SCORE_THRESHOLD + delta:
                return float(delta - step)
        return limit
    finally:
        mf.SCORE_THR = SCORE_THRESHOLD


def detector(models, img):
    sess = mf.session(os.path.join(models, "nanodet-g-416.onnx"))
    height, width = img.shape[:2]
    scale = min(mf.ND_SIZE / width, mf.ND_SIZE / height)
    nw, nh = round(width * scale), round(height * scale)
    resized = bilinear(img, (0.0, 0.0, width, height), nw, nh, scale, scale)
    x = np.zeros((1, 3, mf.ND_SIZE, mf.ND_SIZE), np.float32)
    x[0, :, :nh, :nw] = ((resized[:, :, ::-1] - mf.ND_MEAN) / mf.ND_STD).transpose(2, 0, 1)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"input_1:0": x})))
    dets = mf.detect(outs)
    margin = threshold_margin(outs, dets)
    for d in dets:
        b = np.array(d["box"]) / scale
        d["box"] = [float(np.clip(b[0], 0, width)), float(np.clip(b[1], 0, height)),
                    float(np.clip(b[2], 0, width)), float(np.clip(b[3], 0, height))]
        print(f"  {mf.COCO.get(d['class_id'], d['class_id']):>8} {d['score']:.4f} "
              f"{[round(v, 1) for v in d['box']]}")
    print(f"  the same objects for any threshold within {margin:.4f} of {mf.SCORE_THR}")
    return dict(score_threshold=mf.SCORE_THR, iou_threshold=mf.IOU_THR,
                letterbox=dict(scale=scale, resized_width=nw, resized_height=nh, input_size=mf.ND_SIZE),
                threshold_margin=margin, box_units="image pixels, clipped to the image",
                detections=dets), margin


def embedder(models, img, out_dir):
    sess = mf.session(os.path.join(models, "mobilenetv2-1280.onnx"))
    height, width = img.shape[:2]

    def embed(rgb):
        x = ((rgb / 255.0 - mf.MN_MEAN) / mf.MN_STD).astype(np.float32).transpose(2, 0, 1)[None]
        return sess.run(["embedding"], {"input": x})[0][0]

    ours, pillows, crops, max_pil_diff = [], [], [], 0.0
    for name, box in CROPS:
        x, y, w, h = clamp_crop(box, width, height)
        mine = bilinear(img, (x, y, w, h), EMBED_SIZE, EMBED_SIZE, EMBED_SIZE / w, EMBED_SIZE / h)
        pil = pillow_crop(img, (x, y, x + w, y + h))
        if w <= EMBED_SIZE and h <= EMBED_SIZE:
            # Enlarging: Pillow's triangle filter has two taps, like ours. Away from the image's
            # edge (where Pillow renormalises its weights instead of clamping) they must agree.
            inner = np.s_[1:-1, 1:-1]
            diff = float(np.abs(mine[inner] - pil[inner]).max())
            max_pil_diff = max(max_pil_diff, diff)
            # Pillow computes in float32: ~2e-3 of a level. A sampling position off by half a
            # pixel moves values by whole levels on this textured image.
            assert diff < 1e-2, f"{name}: numpy bilinear differs from Pillow by {diff}"
        e_mine, e_pil = embed(mine), embed(pil)
        cos = float(e_mine @ e_pil / np.linalg.norm(e_mine) / np.linalg.norm(e_pil))
        print(f"  {name:>10} {w:6.1f}x{h:5.1f}  cosine(bilinear, Pillow) {cos:.5f}")
        ours.append(e_mine)
        pillows.append(e_pil)
        crops.append(dict(name=name, box=box, cosine_bilinear_pillow=cos))
    np.asarray(ours, "<f4").tofile(os.path.join(out_dir, "embeddings_bilinear.bin"))
    np.asarray(pillows, "<f4").tofile(os.path.join(out_dir, "embeddings_pillow.bin"))
    return dict(dimension=int(ours[0].shape[0]), input_size=EMBED_SIZE, crops=crops), max_pil_diff


def main():
    models, dog, out_dir = sys.argv[1:4]
    os.makedirs(out_dir, exist_ok=True)
    img = np.asarray(Image.open(dog).convert("RGB"))
    print("dog.jpg through the whole pre-processing path")
    det, margin = detector(models, img)
    assert margin >= 0.02, f"objects change within {margin} of the threshold: pick crops/threshold again"
    emb, max_pil_diff = embedder(models, img, out_dir)
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(dict(image=dict(file="dog.jpg", width=img.shape[1], height=img.shape[0]),
                       detector=det, embedder=emb), f, indent=1)
        f.write("\n")
    with open(os.path.join(out_dir, "README.txt"), "w") as f:
        f.write(README.replace("MARGIN", f"{margin:.4f}").replace("MAX_PIL_DIFF", f"{max_pil_diff:.1e}"))


if __name__ == "__main__":
    main()
