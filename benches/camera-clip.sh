#!/usr/bin/env bash
# Prints the path of the benches' camera-like clip, made once from the sample and cached in
# .deps/media/: the 10 s sample (640x272, 25 fps) decoded four times back to back, stretched to
# 1280x720 and encoded as an IP camera's main stream would be (H.264 main, ~2 Mbit/s CBR, a
# keyframe every 25 frames, no B-frames). Used by video_ring.sh and live_picture.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
media=$repo/.deps/media
clip=$media/bikes-720p-gop25-2mbps.mp4
[ -f "$media/bikes.mp4" ] || bash "$repo/scripts/setup-deps.sh" >&2
if [ ! -f "$clip" ]; then
  src="filesrc location=$media/bikes.mp4 ! qtdemux ! avdec_h264 ! c."
  # concat restarts timestamps at each part: identity single-segment=true makes them continuous.
  # scenecut=0:min-keyint=25 with key-int-max=25: a keyframe every 25 frames exactly.
  gst-launch-1.0 -q concat name=c ! identity single-segment=true ! videoscale add-borders=false \
    ! video/x-raw,width=1280,height=720,pixel-aspect-ratio=1/1 ! videoconvert \
    ! video/x-raw,format=I420 ! x264enc bitrate=2000 pass=cbr key-int-max=25 bframes=0 \
    option-string=scenecut=0:min-keyint=25 speed-preset=faster ! video/x-h264,profile=main \
    ! h264parse ! mp4mux ! filesink location="$clip.tmp" $src $src $src $src >&2
  mv "$clip.tmp" "$clip"
fi
echo "$clip"
