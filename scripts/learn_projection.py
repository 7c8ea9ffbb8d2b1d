#!/usr/bin/env python3
"""Learns the projection of the compact embedding codecs (PCA_INT8, BINARY) from real crops.

    learn_projection.py --out models/mobilenetv2-1280.projection.safetensors RUN.npz [RUN.npz ...]

Each RUN.npz is what `scripts/central/retina_client.py --from-time START --include-empty --save`
wrote while a node, started at START on a log of its own, sent every detection with its f32
embedding (scripts/learn-projection.sh runs both). Only detections captured in the first
`--train-seconds` of each camera's run are learned from; the later ones of the first run are held
out and only used to report how well the compact codes keep the f32 similarities.

The output is a safetensors file with F32 tensors (as retina.proto's EmbeddingCodec describes):
  mean           [D]      mean of the L2-normalised embeddings x
  components     [K, D]   principal components of x, orthonormal rows, decreasing variance
  rotation_<d>   [d, d]   for BINARY codes of d bits, learned by ITQ (Gong & Lazebnik 2011)
Encoding: y = components[:d] @ (x - mean), y /= |y|; PCA_INT8 quantises y; BINARY takes the
signs of z = rotation_<d> @ y (bit i set if z[i] >= 0).

Everything is deterministic: fixed seed, vectors in the order of the files given, float64
maths; set OPENBLAS_NUM_THREADS=1 (learn-projection.sh does) for bit-identical results.
"""

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np

FLOAT_CODECS = ("f32",)  # the projection is learned from exact vectors only


def load_runs(paths, train_seconds):
    """(train, held_out, description): unit-norm float64 detection vectors. Held out are the later
    detections of the first run only: in the other runs the same crops come again at other scales,
    and a crop's nearest neighbour should not be itself."""
    train, held_out, described = [], [], []
    for path in paths:
        run = np.load(path)
        keep = (run["source"] == "objects") & np.isin(run["codec"], FLOAT_CODECS)
        n_train = 0
        for camera in np.unique(run["camera_id"][keep]):
            # The clock starts at the camera's first frame (sequence 0), with or without objects.
            frames = run["frame_camera_id"] == camera
            if not (run["frame_sequence"][frames] == 0).any():
                sys.exit(f"{path}: frame 0 of camera {camera} was not received (run the node on a new log "
                         "and the client with --from-time at the node's start, as learn-projection.sh does)")
            t0 = run["frame_capture_time_ns"][frames].min()
            rows = keep & (run["camera_id"] == camera)
            early = rows & (run["capture_time_ns"] - t0 < int(train_seconds * 1e9))
            late = rows & ~early if not described else np.zeros_like(rows)
            for mask, out in ((early, train), (late, held_out)):
                dims = set(run["dimension"][mask].tolist())
                if len(dims) > 1:
                    sys.exit(f"{path}: mixed dimensions {sorted(dims)}")
                if dims:
                    out.append(run["vectors"][mask][:, : dims.pop()].astype(np.float64))
            n_train += int(early.sum())
        described.append(f"{Path(path).name}: {n_train} vectors")
    if not train:
        sys.exit("no f32 detection vectors in the training window: was the node sending detections as f32?")
    train = np.concatenate(train)
    held_out = np.concatenate(held_out) if held_out else np.zeros((0, train.shape[1]))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    return unit(train), unit(held_out), described


def pca(x, k):
    """(mean, components [k, D], eigenvalues [D]) of the rows of x, largest variance first."""
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / len(x))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, components = eigenvalues[order], vectors[:, order[:k]].T
    # An eigenvector's sign is arbitrary: make each one's largest-magnitude entry positive.
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    return mean, components * signs[:, None], np.clip(eigenvalues, 0, None)


def project(x, mean, components, d):
    """The encoder's y: first d PCA coordinates of x, scaled to unit length."""
    y = (x - mean) @ components[:d].T
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def itq(v, iterations, seed):
    """ITQ rotation for the rows of v [N, d]: alternately B = sign(V R) and R maximising
    tr(B^T V R), i.e. R = U W^T with V^T B = U S W^T. Returns (R, loss before, loss after), the
    loss being the mean squared distance between V R and its codes scaled to unit length."""
    d = v.shape[1]
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    rotation = q * np.sign(np.diag(r))  # a uniformly random orthogonal start

    def loss(rot):
        z = v @ rot
        return float(np.mean(np.sum((np.where(z >= 0, 1.0, -1.0) / np.sqrt(d) - z) ** 2, axis=1)))

    before = loss(rotation)
    for _ in range(iterations):
        b = np.where(v @ rotation >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(v.T @ b)
        rotation = u @ wt
    return rotation, before, loss(rotation)


def encode_pca_int8(y):
    scale = np.abs(y).max(axis=1, keepdims=True) / 127
    return np.round(y / scale) * scale


def encode_binary(y, rotation_rows):
    d = y.shape[1]
    return np.where(y @ rotation_rows.T >= 0, 1.0, -1.0) / np.sqrt(d)


def similarity_agreement(exact, approx, top=10):
    """How well decoded compact codes keep the similarities of exact unit vectors: (Pearson r of
    all pairwise cosines, fraction of vectors whose exact nearest neighbour is among the `top`
    nearest by code)."""
    a, b = exact @ exact.T, approx @ approx.T
    upper = np.triu_indices(len(exact), 1)
    r = float(np.corrcoef(a[upper], b[upper])[0, 1])
    np.fill_diagonal(a, -np.inf)
    np.fill_diagonal(b, -np.inf)
    nearest = a.argmax(axis=1)
    # Stable sort: binary codes tie often; ties keep the order of the vectors, whatever it is.
    by_code = np.argsort(-b, axis=1, kind="stable")[:, :top]
    return r, float(np.mean((by_code == nearest[:, None]).any(axis=1)))


def write_safetensors(path, tensors, metadata):
    """safetensors by hand: u64 LE header length, JSON header (dtype, shape, data_offsets per
    tensor, string __metadata__), padded with spaces to 8 bytes, then the raw LE data."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        tensors[name] = np.frombuffer(raw[8 + n + start : 8 + n + end], "<f4").reshape(t["shape"])
    return tensors, metadata


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help=".npz files of retina_client.py --save")
    p.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    p.add_argument("--train-seconds", type=float, default=5.0, help="learn from the first S seconds")
    p.add_argument("--components", type=int, default=128, help="K, principal components kept")
    p.add_argument("--bits", default="32,64,128", help="BINARY code sizes d to learn rotations for")
    p.add_argument("--iterations", type=int, default=50, help="ITQ iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of ITQ's random start")
    p.add_argument("--embedder", default="mobilenetv2-1280@1.0.0", help="for the file's metadata")
    p.add_argument("--plot", type=Path, help="also draw the explained variance and held-out similarities")
    args = p.parse_args()

    train, held_out, described = load_runs(args.runs, args.train_seconds)
    n, dim = train.shape
    k = args.components
    # The covariance of N vectors has rank N - 1 at most; keep K well below it.
    if n < 3 * k:
        sys.exit(f"{n} training vectors are too few for K = {k} (need at least {3 * k})")
    bits = [d for d in map(int, args.bits.split(",")) if d <= k]

    mean, components, eigenvalues = pca(train, k)
    # The node uses the stored float32 values: learn the rotations and evaluate with them too.
    mean32, components32 = mean.astype(np.float32), components.astype(np.float32)
    mean_s, comp_s = mean32.astype(np.float64), components32.astype(np.float64)
    explained = {d: float(eigenvalues[:d].sum() / eigenvalues.sum()) for d in (16, 32, 64, 128) if d <= k}

    tensors = {"mean": mean32, "components": components32}
    report = [f"training vectors N = {n} (dimension {dim}), first {args.train_seconds:g} s of each run:", *described,
              f"components K = {k}",
              "explained variance: " + ", ".join(f"d={d} {v:.3f}" for d, v in explained.items())]
    for d in bits:
        rotation, before, after = itq(project(train, mean_s, comp_s, d), args.iterations, args.seed)
        # Stored as the matrix the encoder applies to y: z = rotation_d @ y (ITQ's codes are y R).
        tensors[f"rotation_{d}"] = rotation.T.astype(np.float32)
        report.append(f"ITQ d={d}: quantisation loss {before:.4f} -> {after:.4f} ({args.iterations} iterations)")

    if len(held_out) >= 2:
        report.append(f"held out: {len(held_out)} vectors; agreement of decoded codes with f32: "
                      "r = correlation of pairwise cosines, nn = exact nearest neighbour in the code's 10 nearest")
        for d in sorted(set(bits) | {16, 32, 64, 128}):
            if d > k:
                continue
            y = project(held_out, mean_s, comp_s, d)
            rows = {"pca-int8": encode_pca_int8(y)}
            if f"rotation_{d}" in tensors:
                rows["binary"] = encode_binary(y, tensors[f"rotation_{d}"].astype(np.float64))
            for codec, approx in rows.items():
                r, nn = similarity_agreement(held_out, approx)
                report.append(f"  {codec:<8} d={d:<3}  r {r:.3f}  nn {nn:.3f}")

    metadata = {
        "format": "retina-projection/1",
        "embedder": args.embedder,
        "method": f"PCA of L2-normalised embeddings (K={k}); ITQ rotations (Gong & Lazebnik 2011), "
        f"{args.iterations} iterations, seed {args.seed}, on y = P_d (x - mean) scaled to unit length",
        "encode": "y = components[:d] @ (x - mean); y /= |y|; binary: bit i = (rotation_d @ y)[i] >= 0",
        "training": f"detections of the first {args.train_seconds:g} s of each run: " + "; ".join(described),
        "training_vectors": str(n),
        "explained_variance": json.dumps({str(d): round(v, 6) for d, v in explained.items()}),
    }
    write_safetensors(args.out, tensors, metadata)

    # Read the file back: what the node will load is what was learned.
    back, meta_back = read_safetensors(args.out)
    assert meta_back == metadata and back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert np.array_equal(back[name], t), name
    gram = comp_s @ comp_s.T
    report.append(f"components orthonormal within {np.abs(gram - np.eye(k)).max():.1e}")
    sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    report.append(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {sha}")
    print("\n".join(report))

    if args.plot:
        plot(args.plot, eigenvalues, held_out, mean_s, comp_s, tensors)


def plot(path, eigenvalues, held_out, mean, components, tensors):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    d = np.arange(1, 257)
    left.plot(d, np.cumsum(eigenvalues[:256]) / eigenvalues.sum())
    left.set(xlabel="principal components d", ylabel="explained variance", xscale="log", title="PCA (training)")
    left.grid(True, which="both", alpha=0.3)
    exact = held_out @ held_out.T
    upper = np.triu_indices(len(held_out), 1)
    for name in ("rotation_64", "rotation_128"):
        if name in tensors:
            bits = int(name.split("_")[1])
            codes = encode_binary(project(held_out, mean, components, bits), tensors[name].astype(np.float64))
            right.scatter(exact[upper], (codes @ codes.T)[upper], s=1, alpha=0.3, label=f"binary {bits}")
    right.set(xlabel="cosine, f32", ylabel="cosine, decoded code", title="held-out pairs")
    right.legend(markerscale=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
