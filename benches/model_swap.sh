#!/usr/bin/env bash
# The node's memory across live model switches (`make bench-model-swap`, about 4 min): the release
# node with NanoDet and the MobileNetV2 embedder on CAMERAS (default 4) cameras of the bench clip
# (scripts/bench-clip.sh, 2 analysed frames/s each) is switched to SSDLite over gRPC
# (`retina-edge model upload --activate`), its VmRSS sampled every 100 ms throughout. Reported per
# phase: before the switch, the peak while the new set is loaded and self-tested, the watch period
# (both sets loaded), and after the set before is freed; then, on a node without a watch period,
# SWITCHES (default 8) switches back and forth, with the RSS after each: a set that is not freed
# would show as growth per switch. Ratios are to the same node's RSS before its first switch, in
# one run. Writes benches/results/model-swap.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/target/release/retina-edge
[ -x "$bin" ] || { echo "build first: make build" >&2; exit 1; }
clip=$(bash "$repo/scripts/bench-clip.sh")
CAMERAS=${CAMERAS:-4}
SETTLE=${SETTLE:-20}
WATCH=${WATCH:-20}
SWITCHES=${SWITCHES:-8}
work=$(mktemp -d)
node=
trap '[ -n "$node" ] && kill "$node" 2>/dev/null; rm -rf "$work"' EXIT

now() { date +%s.%N; }
plus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a + b }'; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# MiB figures of the samples (lines "seconds kib") from $2 to $3 (seconds): "median min max".
phase() {
  awk -v from="$2" -v to="$3" '$1 >= from && $1 <= to { print $2 / 1024 }' "$1" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print "- - -"; exit }
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "%.0f %.0f %.0f\n", m, v[1], v[NR] }'
}

# switch_to MODEL: the node at $port switches its detector to models/MODEL.toml.
switch_to() {
  "$bin" model upload --addr "http://127.0.0.1:$port" "$repo/models/$1.toml" --activate \
    >"$work/upload.out" 2>&1 || { cat "$work/upload.out" "$work/node.log" >&2; exit 1; }
}

# run LABEL WATCH-SECONDS [SWITCHES]: one node, one switch, and SWITCHES more after it; prints
# its table row, and the RSS after each further switch to $work/after-switches.
run() {
  local label=$1 watch=$2 more=${3:-0}
  config=$work/node.toml
  port=$(free_port)
  samples=$work/rss-$watch.txt
  rm -rf "$work"/node.* "$work"/log.sqlite*
  {
    printf '[node]\nid = "swap"\ngrpc_listen = "127.0.0.1:%s"\n\n[inference]\n' "$port"
    printf 'onnxruntime_library = "%s"\n' "$repo/.deps/onnxruntime/libonnxruntime.so.1.32.0"
    printf 'detector_manifest = "%s"\n' "$repo/models/nanodet-g-416.toml"
    printf 'embedder_manifest = "%s"\n' "$repo/models/mobilenetv2-1280.toml"
    # Memory is measured here, not agreement: SSDLite finds a fifth of NanoDet's objects on this
    # clip, which the self-test and the watch would otherwise refuse.
    printf '\n[inference.self_test]\nmin_detection_ratio = 0.0\n'
    printf '\n[inference.watch]\nseconds = %s\nmin_detection_ratio = 0.0\n\n[log]\npath = "%s"\n\n' "$watch" "$work/log.sqlite"
    for i in $(seq "$CAMERAS"); do
      printf '[[cameras]]\nid = "cam%02d"\nuri = "%s"\nanalysis_fps = 2\nloop_file = true\nrealtime = true\n\n' \
        "$i" "$clip"
    done
  } >"$config"
  "$bin" run --config "$config" >"$work/node.log" 2>&1 &
  node=$!
  (
    while kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$node/status" 2>/dev/null) && [ -n "$kib" ]; do
      echo "$(now) $kib"
      sleep 0.1
    done
  ) >"$samples" &
  local sampler=$!
  sleep "$SETTLE"
  local switch_start switch_end freed
  switch_start=$(now)
  switch_to ssdlite-mobilenetv2-coco
  switch_end=$(now)
  # The watch ends by itself; then the samples settle for as long again.
  sleep "$((watch + 10))"
  grep -q "set before is freed" "$work/node.log" || [ "$watch" = 0 ] ||
    { echo "the watch did not end cleanly:" >&2; tail -5 "$work/node.log" >&2; exit 1; }
  freed=$(plus "$switch_end" "$watch")
  local end i at
  end=$(now)
  : >"$work/after-switches"
  for i in $(seq "$more"); do
    if [ $((i % 2)) = 1 ]; then switch_to nanodet-g-416; else switch_to ssdlite-mobilenetv2-coco; fi
    sleep 5
    at=$(now)
    echo "$((i + 1)) $(phase "$samples" "$(plus "$at" -3)" "$at")" >>"$work/after-switches"
  done
  kill "$node"
  wait "$node" 2>/dev/null || true
  node=
  wait "$sampler" 2>/dev/null || true
  local before peak watching after
  before=$(phase "$samples" "$(plus "$switch_start" -5)" "$switch_start")
  peak=$(phase "$samples" "$switch_start" "$switch_end")
  watching=$(phase "$samples" "$(plus "$switch_end" 1)" "$freed")
  after=$(phase "$samples" "$(plus "$freed" 5)" "$end")
  awk -v label="$label" -v before="$before" -v peak="$peak" -v watching="$watching" -v after="$after" \
    -v seconds="$(plus "$switch_end" "-$switch_start")" 'BEGIN {
      split(before, b, " "); split(peak, p, " "); split(watching, w, " "); split(after, a, " ")
      printf "| %s | %d (%d–%d) | %d (x%.2f) | %.1f s |", label, b[1], b[2], b[3], p[3], p[3] / b[1], seconds
      if (w[1] == "-") printf " – |"; else printf " %d (%d–%d, x%.2f) |", w[1], w[2], w[3], w[1] / b[1]
      printf " %d (%d–%d, x%.2f) |\n", a[1], a[2], a[3], a[1] / b[1]
    }'
}

{
  # The table is written in this subshell, which does not inherit the trap: its node is its own.
  trap '[ -n "$node" ] && kill "$node" 2>/dev/null' EXIT
  echo "# The node's memory across a live model switch (\`make bench-model-swap\`)"
  echo
  echo "VmRSS in MiB of the release node (NanoDet + MobileNetV2 embedder, $CAMERAS cameras of \`$(basename "$clip")\` at 2 analysed frames/s), sampled every 100 ms,"
  echo "switched to SSDLite over gRPC after ${SETTLE} s (\`retina-edge model upload --activate\`: load and run once per worker, self-test, hand-over)."
  echo "Medians with their range; the peak is the largest sample while the switch call ran; ratios are to the same node's median before."
  echo
  echo "| node | before | peak while switching | switch took | watch period (both sets loaded) | after |"
  echo "|---|---:|---:|---:|---:|---:|"
  run "watch ${WATCH} s" "$WATCH"
  run "no watch (\`seconds = 0\`)" 0 "$SWITCHES"
  echo
  echo "The node without a watch period, switched back and forth (NanoDet, SSDLite) after that: RSS 2 to 5 s after each switch."
  echo
  echo "| switches so far | RSS, MiB, median (min–max) |"
  echo "|---:|---:|"
  awk '{ printf "| %d | %d (%d–%d) |\n", $1, $2, $3, $4 }' "$work/after-switches"
} | tee "$repo/benches/results/model-swap.md"
