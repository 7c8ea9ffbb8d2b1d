#!/usr/bin/env bash
# What the status page's live picture costs (`make bench-live-picture`, about 5 min): the release
# node on one file camera of the benches' camera-like clip (1280x720, 25 fps, H.264, a keyframe
# every second; benches/camera-clip.sh), looped and paced in real time, 5 analysed frames/s,
# NanoDet only, 1 worker x 1 intra-op thread, with `[video]` (2 s segments, BlazeFace). One node
# runs throughout; in ROUNDS (default 3) rounds it is measured over WINDOW seconds (default 30)
# without a viewer and WINDOW seconds with one, the side that goes first changing each round.
# The viewer does what the page does: it asks GET /api/status every 300 ms and, for each new
# frame, GET /api/cameras/cam/frame.jpg?time=<the frame's capture time>, one at a time (the
# page's pictures are scaled to 640 pixels across before faces are searched).
# Measured: the node's CPU (utime + stime from /proc/PID/stat over the window) per round, with
# and without the viewer, and their ratio; each picture's time to answer, and whether the picture
# is the very frame asked for (the x-capture-time header against the time asked).
# Writes benches/results/live-picture.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/target/release/retina-edge
[ -x "$bin" ] || { echo "build first: make build (or cargo build --release)" >&2; exit 1; }
ROUNDS=${ROUNDS:-3}
WINDOW=${WINDOW:-30}
report=$repo/benches/results/live-picture.md
started_at=$(date -u '+%Y-%m-%d %H:%M UTC')
clip=$(bash "$repo/benches/camera-clip.sh")

work=$(mktemp -d)
node=
trap '[ -n "$node" ] && kill "$node" 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/node.toml" <<TOML
[node]
id = "live-picture"
grpc_listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:$port"

[inference]
onnxruntime_library = "$repo/.deps/onnxruntime/libonnxruntime.so.1.32.0"
detector_manifest = "$repo/models/nanodet-g-416.toml"
workers = 1
intra_op_threads = 1

[log]
path = "$work/log.sqlite"

[video]
dir = "$work/video"
segment_seconds = 2.0
face_model = "$repo/models/blazeface-back-256.toml"

[[cameras]]
id = "cam"
uri = "$clip"
analysis_fps = 5
loop_file = true
realtime = true
TOML
"$bin" run --config "$work/node.toml" >"$work/node.log" 2>&1 &
node=$!

# The viewer: pictures for SECONDS seconds; one line per picture: "ms exact(0|1)" or "refused".
cat >"$work/viewer.py" <<'PY'
import json, sys, time, urllib.error, urllib.parse, urllib.request
base, seconds = sys.argv[1], float(sys.argv[2])
def ms(s):
    import datetime
    return int(datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)
shown, end = None, time.time() + seconds
while time.time() < end:
    polled = time.time()
    status = json.load(urllib.request.urlopen(base + "/api/status"))
    frame = status["cameras"][0]["frame"]
    if frame and frame["capture_time"] != shown:
        shown = frame["capture_time"]
        t0 = time.time()
        try:
            answer = urllib.request.urlopen(f"{base}/api/cameras/cam/frame.jpg?time={urllib.parse.quote(shown)}")
            answer.read()
            exact = int(ms(answer.headers["x-capture-time"]) == ms(shown))
            print(f"{(time.time() - t0) * 1000:.1f} {exact}", flush=True)
        except urllib.error.HTTPError as e:
            print("refused", e.code, e.read()[:100].decode(errors="replace"), flush=True)
    # The page asks for its status every 300 ms, a picture on its way or not.
    time.sleep(max(0.0, 0.3 - (time.time() - polled)))
PY

until curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null | awk '/^retina_camera_frames_analysed_total/ && $2 > 0 { ok = 1 } END { exit !ok }'; do
  kill -0 "$node" 2>/dev/null || { tail -20 "$work/node.log" >&2; exit 1; }
  sleep 0.2
done
sleep 5
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
window() { # VIEWER(0|1) ROUND: appends "viewer round cores" to runs
  local c0 t0 c1 t1
  c0=$(ticks "$node"); t0=$(date +%s.%N)
  if [ "$1" = 1 ]; then
    python3 "$work/viewer.py" "http://127.0.0.1:$port" "$WINDOW" >>"$work/pictures"
  else
    sleep "$WINDOW"
  fi
  c1=$(ticks "$node"); t1=$(date +%s.%N)
  awk -v v="$1" -v r="$2" -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" -v t0="$t0" -v t1="$t1" \
    'BEGIN { printf "%d %d %.4f\n", v, r, c / hz / (t1 - t0) }' >>"$work/runs"
  echo "viewer=$1 round $2: $(tail -1 "$work/runs")" >&2
}
: >"$work/runs"; : >"$work/pictures"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then window 0 "$round"; window 1 "$round"; else window 1 "$round"; window 0 "$round"; fi
done
hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$node/status")
kill "$node"; wait "$node" 2>/dev/null || true; node=

stat3() { sort -g | awk -v f="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "–"; exit }
  m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf f " (" f "–" f ")", m, v[1], v[NR] }'; }
without=$(awk '$1 == 0 { print $3 }' "$work/runs" | stat3 %.3f)
with=$(awk '$1 == 1 { print $3 }' "$work/runs" | stat3 %.3f)
ratio=$(awk '{ c[$2, $1] = $3 } END { for (r = 1; c[r, 0] != ""; r++) printf "%.3f\n", c[r, 1] / c[r, 0] }' "$work/runs" | stat3 x%.2f)
served=$(grep -vc refused "$work/pictures" || true)
refused=$(grep -c refused "$work/pictures" || true)
exact=$(awk '$2 == 1' "$work/pictures" | wc -l)
latency=$(grep -v refused "$work/pictures" | awk '{ print $1 }' | stat3 %.0f)
p90=$(grep -v refused "$work/pictures" | awk '{ print $1 }' | sort -g | awk '{ v[NR] = $1 } END { printf "%.0f", v[int(NR * 0.9 + 0.5)] }')
rate=$(awk -v n="$served" -v w="$WINDOW" -v r="$ROUNDS" 'BEGIN { printf "%.1f", n / (w * r) }')
{
  echo "# The status page's live picture: what it costs"
  echo
  echo "\`make bench-live-picture\` (benches/live_picture.sh), $started_at, on $(nproc) cores."
  echo "One node, one 1280x720 25 fps H.264 file camera (benches/camera-clip.sh) in real time, 5 analysed"
  echo "frames/s, \`[video]\` with 2 s segments; $ROUNDS rounds of ${WINDOW} s without and ${WINDOW} s with a viewer"
  echo "that asks for the picture of every new frame as the page does. Medians (ranges) over the rounds."
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| node CPU without a viewer (cores) | $without |"
  echo "| node CPU with a viewer (cores) | $with |"
  echo "| with / without, per round | $ratio |"
  echo "| pictures served | $served ($rate a second), $refused refused |"
  echo "| pictures that are the very frame asked for | $exact of $served |"
  echo "| time to answer a picture, ms | $latency, 90th percentile $p90 |"
  echo "| node peak RSS | $((hwm / 1024)) MiB |"
  if [ "$refused" -gt 0 ]; then
    echo; echo "Refusals:"; echo; grep refused "$work/pictures" | sort | uniq -c | sed 's/^/    /'
  fi
} >"$report"
cat "$report"
