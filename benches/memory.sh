#!/usr/bin/env bash
# Where the node's memory goes (`make bench-memory`, about 6 min): the release node's resident
# size (VmRSS) after SETTLE seconds (default 20) of running, for a ladder of settings, each a
# separate node process on the bench clip (scripts/bench-clip.sh: 720p25 H.264, looped and paced
# like a camera, 2 analysed frames/s per camera). The differences between rungs are what each part
# holds. Prints a Markdown table; writes it to benches/results/memory.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/target/release/retina-edge
[ -x "$bin" ] || { echo "build first: make build" >&2; exit 1; }
clip=$(bash "$repo/scripts/bench-clip.sh")
SETTLE=${SETTLE:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# CPU time (user + system) of a process so far, in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# rss LABEL CAMERAS EMBEDDER(yes|no) INFERENCE-LINES [CAMERA-LINES [ENVIRONMENT]]
rss() {
  local label=$1 cameras=$2 embedder=$3 inference=$4 camera_extra=${5:-} environment=${6:-}
  local config=$work/node.toml
  {
    printf '[node]\nid = "memory"\ngrpc_listen = "127.0.0.1:0"\n\n[inference]\n'
    printf 'onnxruntime_library = "%s"\n' "$repo/.deps/onnxruntime/libonnxruntime.so.1.32.0"
    printf 'detector_manifest = "%s"\n' "$repo/models/nanodet-g-416.toml"
    [ "$embedder" = yes ] && printf 'embedder_manifest = "%s"\n' "$repo/models/mobilenetv2-1280.toml"
    printf '%b\n\n[log]\npath = "%s"\n\n' "$inference" "$work/log.sqlite"
    for i in $(seq "$cameras"); do
      printf '[[cameras]]\nid = "cam%02d"\nuri = "%s"\nanalysis_fps = 2\nloop_file = true\nrealtime = true\n%b\n\n' \
        "$i" "$clip" "$camera_extra"
    done
  } >"$config"
  env $environment "$bin" run --config "$config" >"$work/node.log" 2>&1 &
  local pid=$!
  # CPU is measured over the second half, after start-up and warm-up.
  sleep "$((SETTLE / 2))"
  local start
  start=$(ticks "$pid")
  sleep "$((SETTLE - SETTLE / 2))"
  local kib end
  kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
  end=$(ticks "$pid")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$work"/log.sqlite*
  if [ "${kib:-0}" -eq 0 ]; then
    echo "the node did not run for '$label':" >&2
    tail -5 "$work/node.log" >&2
    exit 1
  fi
  awk -v label="$label" -v cameras="$cameras" -v kib="$kib" -v ticks="$((end - start))" \
    -v hz="$(getconf CLK_TCK)" -v seconds="$((SETTLE - SETTLE / 2))" \
    'BEGIN { printf "| %s | %d | %.0f | %.2f |\n", label, cameras, kib / 1024, ticks / hz / seconds }'
}

# decoders LABEL CAMERAS: the same clip decoded by gst-launch alone (demuxer, parser, libav with one
# thread, as the node configures it), without the node: the floor that decoding itself sets.
decoders() {
  local label=$1 cameras=$2 branches=()
  for _ in $(seq "$cameras"); do
    branches+=(filesrc "location=$clip" ! qtdemux ! h264parse ! avdec_h264 max-threads=1 ! fakesink sync=true)
  done
  gst-launch-1.0 -q "${branches[@]}" >/dev/null 2>&1 &
  local pid=$! kib
  sleep "$SETTLE"
  kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  awk -v label="$label" -v cameras="$cameras" -v kib="$kib" 'BEGIN { printf "| %s | %d | %.0f | |\n", label, cameras, kib / 1024 }'
}

before='workers = 2\nintra_op_threads = 1\nmemory_arena = true'
before_camera='decoder_threads = 0'
now=''
{
  echo "# Where the node's memory goes (\`make bench-memory\`)"
  echo
  echo "VmRSS of the release node after ${SETTLE} s, one node per row, cameras on \`$(basename "$clip")\` at 2 analysed frames/s."
  echo "\"Before\" is the configuration up to issue 10: 2 workers x 1 thread, ONNX Runtime's memory arena, the decoder's own threads."
  echo
  echo "| settings | cameras | RSS, MB | CPU, cores |"
  echo "|---|---:|---:|---:|"
  rss "before: detector only" 0 no "$before" "$before_camera"
  rss "before: detector + embedder" 0 yes "$before" "$before_camera"
  for n in 1 4 8; do rss "before" "$n" yes "$before" "$before_camera"; done
  rss "now: detector only" 0 no "$now"
  rss "now: detector + embedder" 0 yes "$now"
  for n in 1 4 8; do rss "now" "$n" yes "$now"; done
  rss "now, but 2 workers x 1 thread" 8 yes 'workers = 2\nintra_op_threads = 1'
  rss "now, but the memory arena on" 8 yes 'memory_arena = true'
  rss "now, but the decoder's own threads" 8 yes "$now" "$before_camera"
  # glibc serves blocks of 1 MiB and more (frames, ONNX Runtime's activations) straight from
  # mmap: nothing large is left behind in its heaps, at the price of a page fault per 4 KiB.
  for n in 1 8; do decoders "decoding alone (gst-launch, no node)" "$n"; done
  for n in 4 8; do rss "now, with MALLOC_MMAP_THRESHOLD_=1048576" "$n" yes "$now" "" MALLOC_MMAP_THRESHOLD_=1048576; done
} | tee "$repo/benches/results/memory.md"
