#!/usr/bin/env bash
# What the recent-video ring costs per camera (`make bench-video`, about 10 min): the release node
# on CAMERAS (default "1 4") file cameras of a camera-like clip (1280x720, 25 fps, H.264 main,
# ~2 Mbit/s CBR, a keyframe every 25 frames, no B-frames; made once from .deps/media/bikes.mp4 and
# cached in .deps/media/), each looped and paced in real time, 2 analysed frames/s, every frame
# decoded, NanoDet only (no embedder), 1 worker x 1 intra-op thread. Each node runs WITHOUT and WITH
# a `[video]` section (2 s segments, BlazeFace as its face model, the ring in a temporary directory)
# in ROUNDS (default 3) alternating rounds, the side that goes first changing each round. Over a
# WINDOW-second window (default 40, the clip's length, so that every window holds the clip's whole
# content once) starting WARMUP seconds (default 5) after every camera's first analysed frame:
# - the node's CPU: utime + stime from /proc/PID/stat at the window's edges, over its length;
# - the ring's bytes written per camera per second: the size of the camera directories at the
#   window's end minus at its start (nothing is pruned: 2 GiB per camera is far off), and, as a
#   check, the closed segments' bytes over the capture time their names say they cover;
# - segments closed per camera in the window, and the node's peak RSS (VmHWM) at its end.
# The ring's rate is compared with the clip's own (its file's bytes over its duration, and its
# H.264 elementary stream's): the difference is MPEG-TS's overhead. CPU differences are taken per
# round (the two runs of a round are next to each other in time), then their median and range.
# Writes benches/results/video-ring.md.
#
# SOURCE=mjpeg (the second half of `make bench-video`, CAMERAS "1 2") measures the same for cameras
# that send Motion JPEG, which the ring can only keep by encoding (`reencode = true`): the clip is
# the same 720p video as JPEG frames (quality 85) in AVI, decoded by the node either way; "with"
# adds the encoder (x264, ultrafast, CRF 23, one thread). Writes benches/results/video-ring-mjpeg.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/target/release/retina-edge
[ -x "$bin" ] || { echo "build first: make build (or cargo build --release)" >&2; exit 1; }
CAMERAS=${CAMERAS:-1 4}
ROUNDS=${ROUNDS:-3}
WINDOW=${WINDOW:-40}
WARMUP=${WARMUP:-5}
SEGMENT=2
SOURCE=${SOURCE:-h264}
case $SOURCE in
  h264) report=$repo/benches/results/video-ring.md ;;
  mjpeg) report=$repo/benches/results/video-ring-mjpeg.md ;;
  *) echo "SOURCE is h264 or mjpeg, not $SOURCE" >&2; exit 1 ;;
esac
started_at=$(date -u '+%Y-%m-%d %H:%M UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
bench_start=$(date +%s)

media=$repo/.deps/media
clip=$(bash "$repo/benches/camera-clip.sh")
h264_clip=$clip
if [ "$SOURCE" = mjpeg ]; then
  clip=$media/bikes-720p-mjpeg.avi
  if [ ! -f "$clip" ]; then
    gst-launch-1.0 -q filesrc location="$h264_clip" ! qtdemux ! avdec_h264 ! videoconvert \
      ! jpegenc quality=85 ! avimux ! filesink location="$clip.tmp" >&2
    mv "$clip.tmp" "$clip"
  fi
fi

work=$(mktemp -d)
node=
trap '[ -n "$node" ] && kill "$node" 2>/dev/null; rm -rf "$work"' EXIT

# The clip's own figures: frames, keyframes, frames shown out of decoding order (B-frames), and the
# bytes of its H.264 elementary stream as the ring's parser writes it (Annex B, SPS/PPS at every
# keyframe).
gst-launch-1.0 -v filesrc location="$h264_clip" ! qtdemux ! h264parse config-interval=-1 \
  ! video/x-h264,stream-format=byte-stream,alignment=au ! identity silent=false ! fakesink 2>/dev/null |
  grep -o 'identity0:sink) ([0-9]* bytes, dts: [^,]*, pts: [^,]*,.*flags: [0-9a-f]*[a-z -]*' |
  awk '{ gsub(/\(/, ""); bytes += $2; frames++; if ($5 != $7) reordered++
         if ($0 !~ /delta-unit/) keys++ }
       END { printf "%d %d %d %.0f\n", frames, keys, reordered + 0, bytes }' >"$work/clip-stats"
read -r clip_frames clip_keys clip_reordered clip_es_bytes <"$work/clip-stats"
clip_bytes=$(stat -c %s "$clip")
h264_bytes=$(stat -c %s "$h264_clip")
clip_seconds=$(awk -v f="$clip_frames" 'BEGIN { printf "%.2f", f / 25 }')
[ "$clip_frames" -gt 0 ] || { echo "cannot read the clip $clip" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }
# CPU time (user + system) of a process so far, in clock ticks (all its threads, live and ended).
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# The ring's state under $1: "bytes-of-all-segments closed-segments closed-bytes closed-ns". A
# segment renamed between the listing and its stat is listed again.
ring_state() {
  python3 - "$1" <<'EOF'
import os, re, sys
root = sys.argv[1]
closed = re.compile(r"^(\d+)-(\d+)\.ts$")
while True:
    try:
        total = count = closed_bytes = closed_ns = 0
        for camera in (os.scandir(root) if os.path.isdir(root) else []):
            for entry in os.scandir(camera.path):
                if not entry.name.endswith(".ts"):
                    continue
                size = entry.stat().st_size
                total += size
                m = closed.match(entry.name)
                if m:
                    count += 1
                    closed_bytes += size
                    closed_ns += int(m.group(2)) - int(m.group(1))
        break
    except FileNotFoundError:
        continue
print(total, count, closed_bytes, closed_ns)
EOF
}

# run N RING(0|1) ROUND: one node; appends "n ring round cores hwm_kib ring_bytes closed
# closed_bytes closed_ns seconds" to $work/runs.
run() {
  local n=$1 ring=$2 round=$3 port config=$work/node.toml video=$work/video
  port=$(free_port)
  rm -rf "$work"/log.sqlite* "$video"
  {
    printf '[node]\nid = "video-ring"\ngrpc_listen = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:%s"\n\n' "$port"
    printf '[inference]\nonnxruntime_library = "%s"\n' "$repo/.deps/onnxruntime/libonnxruntime.so.1.32.0"
    printf 'detector_manifest = "%s"\nworkers = 1\nintra_op_threads = 1\n\n' "$repo/models/nanodet-g-416.toml"
    printf '[log]\npath = "%s"\n\n' "$work/log.sqlite"
    if [ "$ring" = 1 ]; then
      printf '[video]\ndir = "%s"\nsegment_seconds = %s\nface_model = "%s"\n' \
        "$video" "$SEGMENT" "$repo/models/blazeface-back-256.toml"
      [ "$SOURCE" = mjpeg ] && printf 'reencode = true\n'
      printf '\n'
    fi
    for i in $(seq "$n"); do
      printf '[[cameras]]\nid = "cam%02d"\nuri = "%s"\nanalysis_fps = 2\nloop_file = true\nrealtime = true\ndecode = "all"\n\n' \
        "$i" "$clip"
    done
  } >"$config"
  "$bin" run --config "$config" >"$work/node.log" 2>&1 &
  node=$!
  # Every camera's first analysed frame, within a minute.
  local waited=0
  until curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null |
    awk -v n="$n" '/^retina_camera_frames_analysed_total/ && $2 > 0 { k++ } END { exit !(k == n) }'; do
    sleep 0.2
    waited=$((waited + 1))
    if [ "$waited" -gt 300 ] || ! kill -0 "$node" 2>/dev/null; then
      echo "the node did not analyse a frame of every camera (N=$n, ring=$ring):" >&2
      tail -20 "$work/node.log" >&2
      exit 1
    fi
  done
  sleep "$WARMUP"
  local t0 c0 r0 t1 c1 r1 hwm
  r0=$(ring_state "$video")
  c0=$(ticks "$node")
  t0=$(now)
  sleep "$WINDOW"
  c1=$(ticks "$node")
  t1=$(now)
  r1=$(ring_state "$video")
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$node/status")
  kill "$node"
  wait "$node" 2>/dev/null || true
  node=
  if grep -q "not kept\|recording stopped" "$work/node.log"; then
    echo "the recording failed (N=$n):" >&2
    grep "not kept\|recording stopped" "$work/node.log" | head -5 >&2
    exit 1
  fi
  awk -v n="$n" -v ring="$ring" -v round="$round" -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" \
    -v t0="$t0" -v t1="$t1" -v hwm="$hwm" -v r0="$r0" -v r1="$r1" 'BEGIN {
      split(r0, a, " "); split(r1, b, " "); s = t1 - t0
      # %.0f, not %d: the %d of mawk stops at 2^31 (nanoseconds, bytes).
      printf "%d %d %d %.4f %d %.0f %d %.0f %.0f %.3f\n", n, ring, round, c / hz / s, hwm,
        b[1] - a[1], b[2] - a[2], b[3] - a[3], b[4] - a[4], s
    }' >>"$work/runs"
  echo "N=$n ring=$ring round $round: $(tail -1 "$work/runs")" >&2
}

: >"$work/runs"
for round in $(seq "$ROUNDS"); do
  for n in $CAMERAS; do
    # The side that goes first changes each round.
    if [ $((round % 2)) = 1 ]; then run "$n" 0 "$round"; run "$n" 1 "$round"; else run "$n" 1 "$round"; run "$n" 0 "$round"; fi
  done
done
elapsed=$(($(date +%s) - bench_start))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# "median (min–max)" of the numbers on stdin, with the printf format $1.
stat3() {
  sort -g | awk -v f="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "–"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf f " (" f "–" f ")\n", m, v[1], v[NR] }'
}

# Per round, the figures of one N: "round cores-off cores-on hwm-off hwm-on ring-bytes closed
# closed-bytes closed-ns seconds-on".
pairs() {
  awk -v n="$1" '$1 == n && $2 == 0 { off[$3] = $4; hoff[$3] = $5 }
    $1 == n && $2 == 1 { on[$3] = $4; hon[$3] = $5; rest[$3] = $6 " " $7 " " $8 " " $9 " " $10 }
    END { for (r in on) if (r in off) print r, off[r], on[r], hoff[r], hon[r], rest[r] }' "$work/runs" | sort -n
}

clip_rate=$(awk -v b="$clip_bytes" -v s="$clip_seconds" 'BEGIN { print b / s }')
h264_rate=$(awk -v b="$h264_bytes" -v s="$clip_seconds" 'BEGIN { print b / s }')
es_rate=$(awk -v b="$clip_es_bytes" -v s="$clip_seconds" 'BEGIN { print b / s }')

{
  if [ "$SOURCE" = mjpeg ]; then
    echo "# What the recent-video ring costs per camera that sends Motion JPEG, encoded for the ring (\`make bench-video\`)"
  else
    echo "# What the recent-video ring costs per camera (\`make bench-video\`)"
  fi
  echo
  echo "Command: \`make bench-video\` (\`SOURCE=$SOURCE bash benches/video_ring.sh\`; ROUNDS=$ROUNDS WINDOW=$WINDOW WARMUP=$WARMUP CAMERAS=\"$CAMERAS\")."
  echo "Run $started_at on $(nproc) cores ($(uname -m), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)),"
  echo "load average $load_start at the start and $load_end at the end; took $((elapsed / 60)) min $((elapsed % 60)) s."
  echo
  if [ "$SOURCE" = mjpeg ]; then
    echo "The clip, \`$(basename "$clip")\`: every frame of the H.264 clip below decoded and encoded by \`jpegenc quality=85\`"
    echo "into AVI (Motion JPEG, as many older IP cameras send), $clip_bytes bytes: **$(awk -v b="$clip_bytes" -v s="$clip_seconds" 'BEGIN { printf "%.0f bytes/s (%.3f Mbit/s)", b / s, b / s * 8 / 1e6 }')**."
    echo "The ring cannot keep JPEG frames as they come: with \`reencode = true\` it encodes the decoded frames (\`x264enc\`"
    echo "ultrafast, zerolatency, CRF 23, one thread, a keyframe per segment). The H.264 clip it was made from:"
    echo
  fi
  echo "The clip, \`$(basename "$h264_clip")\`: the 10 s sample \`bikes.mp4\` (640x272, 25 fps) decoded four times back to"
  echo "back, stretched to 1280x720 and encoded by GStreamer's \`x264enc\` (main profile, \`bitrate=2000 pass=cbr\`, 600 ms VBV,"
  echo "\`key-int-max=25\`, no scene-cut keyframes, \`bframes=0\`, \`speed-preset=faster\`) into MP4: $clip_frames frames ($clip_seconds s),"
  echo "$clip_keys keyframes (one a second), $clip_reordered frames out of decoding order. Its file is $h264_bytes bytes:"
  awk -v r="$h264_rate" -v e="$es_rate" -v b="$clip_es_bytes" 'BEGIN {
    printf "**%.0f bytes/s (%.3f Mbit/s)**; its H.264 elementary stream (Annex B, SPS/PPS at every keyframe, as the ring'"'"'s\n", r, r * 8 / 1e6
    printf "parser passes it on) is %d bytes, %.0f bytes/s.\n", b, e }'
  echo
  echo "Each run is one \`target/release/retina-edge run\` on N file cameras of that clip (\`loop_file\`, \`realtime\`,"
  echo "\`analysis_fps = 2\`, \`decode = \"all\"\`), NanoDet only (no embedder), \`workers = 1\`, \`intra_op_threads = 1\`, the descriptor"
  echo "log in a temporary directory on the same ext4 disk as the ring. \"With\" adds \`[video]\` with \`segment_seconds = $SEGMENT\`,"
  echo "\`face_model = models/blazeface-back-256.toml\` and a temporary \`dir\` (defaults otherwise: 2 GiB and 24 h per camera, so"
  echo "nothing is pruned in a run). The window is $WINDOW s, starting $WARMUP s after every camera's first analysed frame. CPU is the"
  echo "node's utime + stime (\`/proc/PID/stat\`) over the window; the ring's rate is the growth of its segment files"
  echo "over the window; peak RSS is VmHWM at the window's end (start-up included). The two runs of a round are back to"
  echo "back, the side going first changing each round; differences and ratios are taken per round, then their median"
  echo "and range over the $ROUNDS rounds."
  for n in $CAMERAS; do
    pairs "$n" >"$work/pairs-$n"
    echo
    echo "## $n camera$([ "$n" = 1 ] || echo s)"
    echo
    echo "| figure | median (min–max) over $ROUNDS rounds |"
    echo "|---|---:|"
    echo "| node CPU without the ring, cores | $(awk '{ print $2 }' "$work/pairs-$n" | stat3 %.3f) |"
    echo "| node CPU with the ring, cores | $(awk '{ print $3 }' "$work/pairs-$n" | stat3 %.3f) |"
    echo "| **ring's CPU per camera, share of a core** (with − without, / $n) | **$(awk -v n="$n" '{ print ($3 - $2) / n }' "$work/pairs-$n" | stat3 %.4f)** |"
    echo "| ratio of the node's CPU, with / without | x$(awk '{ print $3 / $2 }' "$work/pairs-$n" | stat3 %.3f) |"
    echo "| **ring written per camera, bytes/s** | **$(awk -v n="$n" '{ print $6 / n / $10 }' "$work/pairs-$n" | stat3 %.0f)** |"
    echo "| the same in Mbit/s | $(awk -v n="$n" '{ print $6 / n / $10 * 8 / 1e6 }' "$work/pairs-$n" | stat3 %.3f) |"
    echo "| per camera per day, GB (10^9 B) | $(awk -v n="$n" '{ print $6 / n / $10 * 86400 / 1e9 }' "$work/pairs-$n" | stat3 %.1f) |"
    echo "| **$([ "$SOURCE" = mjpeg ] && echo "ring rate / the MJPEG stream's" || echo "TS overhead: ring rate / the clip file's bitrate")** | **x$(awk -v n="$n" -v r="$clip_rate" '{ print $6 / n / $10 / r }' "$work/pairs-$n" | stat3 %.3f)** |"
    echo "| ring rate / the H.264 elementary stream's | x$(awk -v n="$n" -v r="$es_rate" '{ print $6 / n / $10 / r }' "$work/pairs-$n" | stat3 %.3f) |"
    echo "| check: closed segments' bytes / the capture time they cover, per camera, bytes/s | $(awk '$9 > 0 { print $8 / ($9 / 1e9) }' "$work/pairs-$n" | stat3 %.0f) |"
    echo "| segments closed per camera in the $WINDOW s window | $(awk -v n="$n" '{ print $7 / n }' "$work/pairs-$n" | stat3 %.1f) |"
    echo "| **a 2 GiB ring (\`max_bytes_per_camera\` default) holds, hours** | **$(awk -v n="$n" '{ print 2^31 / ($6 / n / $10) / 3600 }' "$work/pairs-$n" | stat3 %.2f)** |"
    echo "| peak RSS (VmHWM) without the ring, MiB | $(awk '{ print $4 / 1024 }' "$work/pairs-$n" | stat3 %.0f) |"
    echo "| peak RSS (VmHWM) with the ring, MiB | $(awk '{ print $5 / 1024 }' "$work/pairs-$n" | stat3 %.0f) |"
  done
  echo
  echo "## Every run"
  echo
  echo "| N | ring | round | CPU, cores | VmHWM, MiB | ring bytes in the window | segments closed | closed segments' bytes | their capture time, s | window, s |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  sort -k1,1n -k3,3n -k2,2n "$work/runs" | awk '{ printf "| %d | %s | %d | %.3f | %.0f | %.0f | %d | %.0f | %.2f | %.2f |\n",
    $1, ($2 ? "with" : "without"), $3, $4, $5 / 1024, $6, $7, $8, $9 / 1e9, $10 }'
} | tee "$report"
