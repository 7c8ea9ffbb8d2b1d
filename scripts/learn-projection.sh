#!/usr/bin/env bash
# Learns models/mobilenetv2-1280.projection.safetensors (the projection of the PCA_INT8 and BINARY
# codecs) from real crops of the bundled clip, end to end and reproducibly:
#   1. builds the node (or takes the one given with --node),
#   2. runs it over the first pass of bikes.mp4, every frame analysed, as fast as inference goes,
#      once per (frame width, detector threshold) of `runs` below, sending every detection with
#      its f32 embedding, and collects the vectors with scripts/central/retina_client.py --save,
#   3. learns the projection from the detections of the first 5 s only (the rest is held out)
#      with scripts/learn_projection.py, fixed seed, single-threaded BLAS.
# Usage: scripts/learn-projection.sh [--node BIN] [--out FILE] [--embedder MANIFEST]
# (--embedder: another embedder's manifest, e.g. a new model before it has a projection; then give
# --out too, and add a [projection] section with a new id to that manifest.)
# Its working files (configs, node logs and descriptor logs, the .npz of every run, a plot) stay in
# .deps/learn-projection/, so the last step can be rerun alone on the same embeddings.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
node=""
out="$repo/models/mobilenetv2-1280.projection.safetensors"
embedder="$repo/models/mobilenetv2-1280.toml"
while [ $# -gt 0 ]; do
  case "$1" in
    --node) node=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --embedder) embedder=$(realpath "$2"); shift 2 ;;
    *) echo "usage: $0 [--node BIN] [--out FILE] [--embedder MANIFEST]" >&2; exit 2 ;;
  esac
done

# The node's config section that makes it send every detection with its exact (f32) embedding.
# DESCRIBE_CONFIG in the environment replaces it, for a node of another config format.
describe_config=${DESCRIBE_CONFIG:-'[describe]
codec = "f32"
send_detections = true'}

# Real crops of the same first 5 seconds, at three frame scales and a detector threshold below
# the manifest's 0.4 (0.25), so that K = 128 components rest on several hundred vectors.
runs=("640 0.25" "480 0.25" "320 0.25")

python="$repo/.deps/python/bin/python"
work="$repo/.deps/learn-projection"
# A node left running by an interrupted or failed run would hold its port and both cores.
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT
log() { printf '[learn-projection] %s\n' "$*"; }

bash "$repo/scripts/setup-deps.sh"
# The ONNX Runtime that scripts/setup-deps.sh installed, whatever its version.
ort_library=$(ls "$repo"/.deps/onnxruntime/libonnxruntime.so.* | head -n 1)
if [ -z "$node" ]; then
  (cd "$repo" && cargo build --release --locked)
  node="$repo/target/release/retina-edge"
fi
rm -rf "$work"
mkdir -p "$work"

npz=()
for run in "${runs[@]}"; do
  read -r width threshold <<<"$run"
  name="w${width}-t${threshold}"
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$work/$name.toml" <<EOF
[node]
id = "learn-projection"
grpc_listen = "127.0.0.1:$port"
exit_when_cameras_end = true

[inference]
onnxruntime_library = "$ort_library"
detector_manifest = "$repo/models/nanodet-g-416.toml"
embedder_manifest = "$embedder"
score_threshold = $threshold
workers = 2
intra_op_threads = 1

$describe_config

[[cameras]]
id = "bikes"
uri = "$repo/.deps/media/bikes.mp4"
analysis_fps = 0
realtime = false
max_frame_width_px = $width
EOF
  log "run $name: node $node"
  # The node keeps its descriptors in a log beside the config ($name.log.sqlite, new: $work was
  # emptied above); a log may also hold earlier runs, so the client starts at this run's first
  # capture time, not at the log's earliest descriptor.
  since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  "$node" run --config "$work/$name.toml" 2>"$work/$name.log" &
  pid=$!
  # --from-time: the frames analysed before the client connected are read from the node's log,
  # none is missed. The stream ends when the node stops at the end of the clip.
  if ! "$python" "$repo/scripts/central/retina_client.py" --addr "127.0.0.1:$port" --from-time "$since" \
    --include-empty --name learn-projection --save "$work/$name.npz" >"$work/$name.out"; then
    kill "$pid" 2>/dev/null || true
    log "the client failed; node log: $work/$name.log"
    exit 1
  fi
  wait "$pid" || { log "the node failed; see $work/$name.log"; exit 1; }
  pid=""
  tail -n 6 "$work/$name.out" | sed 's/^/    /'
  npz+=("$work/$name.npz")
done

log "learning from the first 5 s"
OPENBLAS_NUM_THREADS=1 "$python" "$repo/scripts/learn_projection.py" --out "$out" \
  --train-seconds 5 --components 128 --bits 32,64,128 --iterations 50 --seed 0 \
  --embedder "$("$python" -c 'import sys, tomllib; m = tomllib.load(open(sys.argv[1], "rb"))["model"]; print(m["id"] + "@" + m["version"])' "$embedder")" \
  --plot "$work/projection.png" "${npz[@]}"
log "plot: $work/projection.png"
sha256sum "$out"
