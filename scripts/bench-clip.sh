#!/usr/bin/env bash
# Makes (once) and prints the path of the benchmarks' camera-like clip: 40 s of 1280x720 at 25 fps,
# H.264 main at 4 Mbit/s with a 2 s GOP, like a typical IP camera's main stream. bikes.mp4 is 10 s
# of 640x272: four back-to-back decodes, stretched to 1280x720.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
media=$repo/.deps/media
clip=$media/bikes-720p.mp4
[ -f "$media/bikes.mp4" ] || bash "$repo/scripts/setup-deps.sh" >&2
if [ ! -f "$clip" ]; then
  src="filesrc location=$media/bikes.mp4 ! qtdemux ! avdec_h264 ! c."
  # concat restarts timestamps at each part: identity single-segment=true makes them continuous.
  gst-launch-1.0 -q concat name=c ! identity single-segment=true ! videoscale add-borders=false \
    ! video/x-raw,width=1280,height=720,pixel-aspect-ratio=1/1 ! videoconvert \
    ! video/x-raw,format=I420 ! x264enc bitrate=4000 key-int-max=50 speed-preset=faster \
    ! video/x-h264,profile=main ! h264parse ! mp4mux ! filesink location="$clip.tmp" $src $src $src $src >&2
  mv "$clip.tmp" "$clip"
fi
echo "$clip"
