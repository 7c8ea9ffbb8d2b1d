#!/usr/bin/env bash
# make-bad-media.sh DEST_DIR: builds a corpus of bad and unusual media files for the test that runs
# each file as a camera in the node. Uses only gst-launch-1.0, coreutils and python3 (fixed seeds);
# the output is byte-for-byte reproducible (single-threaded encoders, muxer dates/UIDs fixed).
# Input: .deps/media/bikes.mp4 (scripts/setup-deps.sh). ~5 s on 2 cores, ~4.5 MB in total.
# Idempotent: DEST_DIR/.stamp holds the sha256 of this script; when it matches and every file is
# there, the script exits at once. Otherwise everything is rebuilt in a temporary folder inside
# DEST_DIR and moved in place, so an interrupted run never leaves half-written files behind.
#
# | file                   | what it is                                         | why it is in the corpus (what can go wrong)                  |
# |------------------------|----------------------------------------------------|--------------------------------------------------------------|
# | still-640x480.jpg      | one JPEG image (test pattern)                      | a "camera" that is a still: 1 frame then EOS, no framerate   |
# | still-4000x3000.jpg    | 12 MP JPEG                                         | big single frame: memory, scaling, preprocessing cost        |
# | still-24x16.png        | tiny PNG (RGBA)                                    | smaller than any model input / crop: divide-by-zero, 0 boxes |
# | still-320x240.png      | PNG (RGBA)                                         | alpha channel, PNG decoder path, framerate 0/1               |
# | still-gray.png         | 8-bit grayscale PNG (decodes to GRAY8)             | single-channel frames where RGB is expected                  |
# | still-frame.jpg        | one real frame of bikes.mp4 (frame 52, ~2.1 s)     | a still with real content: detections on a 1-frame stream    |
# | still.bmp              | BMP (avenc_bmp, 160x120, 77 KB)                    | no BMP parser: avdec_bmp gets filesrc's 4 KiB chunks and     |
# |                        |                                                    | fails ("No valid frames decoded"); a BMP < 4 KiB would decode|
# | (no GIF)               | skipped: no GIF encoder (avenc_gif/gifenc) in      |                                                              |
# |                        | GStreamer 1.22 on Debian 12                        |                                                              |
# | audio-only.mp3         | 3 s MP3 tone, ID3v2 tag                            | no video pad at all: must fail cleanly, not hang             |
# | audio-only.m4a         | 3 s AAC in MP4                                     | same, MP4 container (qtdemux exposes only audio)             |
# | audio-only.ogg         | 3 s Vorbis in Ogg                                  | same, Ogg container                                          |
# | empty.mp4              | 0 bytes                                            | typefind fails immediately                                   |
# | truncated.mp4          | first 100000 bytes of bikes.mp4                    | bikes.mp4 has its moov atom at the END: no index at all      |
# | truncated-tail.mp4     | first 40% of bikes.mp4 (last 60% cut)              | moov at the end is cut off too: mdat without moov, unplayable|
# | truncated-faststart.mp4| bikes.mp4 remuxed moov-first, then first 40% kept  | index says 10 s but data stops at ~40%: qtdemux plays 98     |
# |                        |                                                    | frames (3.9 s) then a clean EOS, no error (half-copied file) |
# | garbage.mp4            | 200 KiB of pseudo-random bytes (seed 1)            | unknown type: typefind must fail, not crash                  |
# | garbage.ts             | 188-byte packets, 0x47 sync + random payload       | typefind says MPEG-TS, but there is no valid PAT/PMT/PES     |
# | page.html              | a small HTML login page                            | what an HTTP camera URL really returns when auth is wrong    |
# | huge-7680x4320.mkv     | H.264 8K, 4 frames at 1 fps                        | huge frames: memory, decoder limits (beyond level 5.2)       |
# | tiny-8x8.mkv           | H.264 8x8 (x264 accepts it), 3 s at 25 fps         | frames smaller than any model input or tile                  |
# | gray.mkv               | FFV1 GRAY8 (avenc_ffv1), bikes at 320x136, 2 s     | decoder outputs GRAY8 video: conversion must be negotiated   |
# | yuv444.mkv             | H.264 High 4:4:4 (Y444), bikes, 4 s                | profile that hardware decoders / some pipelines reject       |
# | mjpeg.avi              | MJPEG in AVI, bikes, 25 fps, 4 s                   | old IP-camera format: intra-only, AVI demuxer                |
# | h265.mkv               | H.265/HEVC (x265enc, I420), bikes, 4 s             | other codec: needs an HEVC decoder                           |
# | unknown-codec.mkv      | h265.mkv with its Matroska codec id changed to an  | a codec no installed decoder handles: GStreamer says "missing|
# |                        | unknown one (V_QQQQQ/ISO/QQQQ, same length)        | plug-in"; the node must say which codec                      |
# | vfr.mkv                | H.264, 25 fps source with ~30% of frames dropped,  | variable frame rate: caps framerate=0/1, irregular pts gaps  |
# |                        | caps framerate=0/1                                 |                                                              |
# | caps-change.ts         | two MPEG-TS H.264 segments, 320x240 then 640x480,  | resolution changes at 2 s, PTS restart (tsdemux smooths it): |
# |                        | 2 s each, concatenated with cat                    | renegotiation, buffer pools, trackers' coordinates           |
# | no-timestamps.h264     | raw Annex-B H.264 elementary stream, bikes, 4 s    | no container: no timestamps or duration (h264parse derives   |
# |                        |                                                    | 25 fps from the SPS VUI and invents timestamps)              |
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DEST_DIR" >&2
  exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
self="$repo/scripts/$(basename "$0")"
clip="$repo/.deps/media/bikes.mp4"
dest=$1

files=(
  still-640x480.jpg still-4000x3000.jpg still-24x16.png still-320x240.png still-gray.png
  still-frame.jpg still.bmp
  audio-only.mp3 audio-only.m4a audio-only.ogg
  empty.mp4 truncated.mp4 truncated-tail.mp4 truncated-faststart.mp4 garbage.mp4 garbage.ts
  page.html
  huge-7680x4320.mkv tiny-8x8.mkv gray.mkv yuv444.mkv mjpeg.avi h265.mkv unknown-codec.mkv vfr.mkv caps-change.ts
  no-timestamps.h264
)

stamp=$(sha256sum "$self" | cut -d' ' -f1)
if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$stamp" ]; then
  complete=1
  for f in "${files[@]}"; do [ -e "$dest/$f" ] || complete=0; done
  [ $complete -eq 1 ] && exit 0
fi

[ -f "$clip" ] || { echo "missing $clip: run scripts/setup-deps.sh" >&2; exit 1; }
command -v gst-launch-1.0 >/dev/null || { echo "missing gst-launch-1.0: run scripts/setup-deps.sh" >&2; exit 1; }
python=python3
[ -x /usr/bin/python3 ] && python=/usr/bin/python3

mkdir -p "$dest"
rm -f "$dest/.stamp"
work=$(mktemp -d "$dest/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

log() { printf '[bad-media] %s\n' "$*"; }
# gst-launch-1.0 -q, with the error shown only when it fails.
gst() {
  if ! gst-launch-1.0 -q "$@" >gst.log 2>&1; then
    cat gst.log >&2
    echo "gst-launch-1.0 failed: $*" >&2
    exit 1
  fi
}

# Decoded frames of bikes.mp4 (640x272, 25 fps); "first N frames" is `identity eos-after=N`.
bikes="filesrc location=\"$clip\" ! qtdemux ! h264parse ! avdec_h264"
# threads=1: with frame threads, x264's rate control depends on timing and the output differs per run.
x264="x264enc speed-preset=ultrafast threads=1"

# Muxers write the wall-clock time (MP4 mvhd/tkhd/mdhd, Matroska DateUTC), a random Matroska
# SegmentUID and random Ogg stream serials: set them to fixed values so the corpus is reproducible.
normalize() {
  "$python" - "$@" <<'PY'
import hashlib, struct, sys

def mp4(b):
    def walk(off, end):
        while off + 8 <= end:
            size, kind = struct.unpack(">I4s", b[off:off + 8])
            if size < 8 or off + size > end:
                return
            if kind in (b"moov", b"trak", b"mdia"):
                walk(off + 8, off + size)
            elif kind in (b"mvhd", b"tkhd", b"mdhd"):
                n = 16 if b[off + 8] == 1 else 8  # creation + modification time
                b[off + 12:off + 12 + n] = bytes(n)
            off += size
    walk(0, len(b))

def mkv(b, name):
    head = bytes(b[:4096])
    uid = head.find(b"\x73\xa4\x90")  # SegmentUID, 16 bytes
    if uid >= 0:
        b[uid + 3:uid + 19] = hashlib.sha256(name.encode()).digest()[:16]
    date = head.find(b"\x44\x61\x88")  # DateUTC, 8 bytes; 0 = 2001-01-01
    if date >= 0:
        b[date + 3:date + 11] = bytes(8)
    # TrackUID (8 bytes) in Tracks, and TagTrackUID in the Tags at the end that refer to it.
    for n, at in enumerate(i for i in range(len(head)) if head.startswith(b"\x73\xc5\x88", i)):
        old, new = head[at + 3:at + 11], struct.pack(">Q", n + 1)
        for ref in (b"\x73\xc5\x88", b"\x63\xc5\x88"):
            data = bytes(b)
            i = data.find(ref + old)
            while i >= 0:
                b[i + 3:i + 11] = new
                i = data.find(ref + old, i + 1)

def ogg(b):
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    serials, off = {}, 0
    while b[off:off + 4] == b"OggS":
        nseg = b[off + 26]
        size = 27 + nseg + sum(b[off + 27:off + 27 + nseg])
        old = bytes(b[off + 14:off + 18])
        b[off + 14:off + 18] = struct.pack("<I", serials.setdefault(old, len(serials) + 1))
        b[off + 22:off + 26] = bytes(4)
        crc = 0
        for x in b[off:off + size]:
            crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ x]
        b[off + 22:off + 26] = struct.pack("<I", crc)
        off += size

for name in sys.argv[1:]:
    with open(name, "rb") as f:
        b = bytearray(f.read())
    if name.endswith((".mp4", ".m4a")):
        mp4(b)
    elif name.endswith(".mkv"):
        mkv(b, name)
    elif name.endswith(".ogg"):
        ogg(b)
    with open(name, "wb") as f:
        f.write(b)
PY
}

log "stills"
gst videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,width=640,height=480 ! videoconvert \
  ! jpegenc ! filesink location=still-640x480.jpg
gst videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,width=4000,height=3000 ! videoconvert \
  ! jpegenc quality=60 ! filesink location=still-4000x3000.jpg
gst videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,width=24,height=16 ! videoconvert \
  ! pngenc ! filesink location=still-24x16.png
gst videotestsrc num-buffers=1 pattern=ball ! video/x-raw,width=320,height=240 ! videoconvert \
  ! pngenc ! filesink location=still-320x240.png
gst videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,width=320,height=240 ! videoconvert \
  ! video/x-raw,format=GRAY8 ! pngenc ! filesink location=still-gray.png
# Frames up to ~50 are encoded; multifilesink max-files=1 keeps only the last one.
mkdir frames
gst $bikes ! identity eos-after=51 ! videoconvert ! jpegenc \
  ! multifilesink location=frames/f-%03d.jpg max-files=1
frame=(frames/f-*.jpg)
[ ${#frame[@]} -eq 1 ] || { echo "expected one frame, got: ${frame[*]}" >&2; exit 1; }
mv "${frame[0]}" still-frame.jpg
rmdir frames
gst videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,width=160,height=120 ! videoconvert \
  ! avenc_bmp ! filesink location=still.bmp
# No GIF: neither avenc_gif nor gifenc exists in GStreamer 1.22 on Debian 12 (gdkpixbuf only decodes).

log "audio only"
audio="audiotestsrc num-buffers=130 wave=sine freq=440 ! audioconvert" # 130 x 1024 samples = 3 s
gst $audio ! lamemp3enc ! id3v2mux ! filesink location=audio-only.mp3
gst $audio ! voaacenc ! aacparse ! mp4mux ! filesink location=audio-only.m4a
gst $audio ! vorbisenc ! oggmux ! filesink location=audio-only.ogg

log "broken files"
: >empty.mp4
head -c 100000 "$clip" >truncated.mp4
size=$(stat -c %s "$clip")
head -c $((size * 40 / 100)) "$clip" >truncated-tail.mp4
gst filesrc location="$clip" ! qtdemux ! h264parse \
  ! mp4mux faststart=true faststart-file="$work/faststart.tmp" ! filesink location=faststart.mp4
normalize faststart.mp4
head -c $(($(stat -c %s faststart.mp4) * 40 / 100)) faststart.mp4 >truncated-faststart.mp4
rm -f faststart.mp4 faststart.tmp
"$python" - <<'EOF'
import random
rng = random.Random(1)
with open("garbage.mp4", "wb") as f:
    f.write(rng.randbytes(200 * 1024))
# 1000 packets of 188 bytes: 0x47 sync byte, then random header and payload (so random PIDs,
# including PAT/PMT ones, with payloads that are not valid sections).
with open("garbage.ts", "wb") as f:
    for _ in range(1000):
        f.write(b"\x47" + rng.randbytes(187))
EOF
cat >page.html <<'EOF'
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Network Camera - Login</title>
</head>
<body>
  <h1>IP Camera Web Interface</h1>
  <form method="post" action="/login.cgi">
    <label>User name <input type="text" name="user"></label>
    <label>Password <input type="password" name="password"></label>
    <input type="submit" value="Log in">
  </form>
  <p>401 Unauthorized: please log in to view the live stream.</p>
</body>
</html>
EOF

log "unusual videos"
gst videotestsrc num-buffers=4 pattern=smpte \
  ! video/x-raw,width=7680,height=4320,framerate=1/1,format=I420 \
  ! $x264 bitrate=300 ! h264parse ! matroskamux ! filesink location=huge-7680x4320.mkv
gst videotestsrc num-buffers=75 pattern=ball ! video/x-raw,width=8,height=8,framerate=25/1,format=I420 \
  ! $x264 ! h264parse ! matroskamux ! filesink location=tiny-8x8.mkv
gst $bikes ! identity eos-after=50 ! videoscale ! video/x-raw,width=320,height=136 ! videoconvert \
  ! video/x-raw,format=GRAY8 ! avenc_ffv1 coder=1 context=1 ! matroskamux ! filesink location=gray.mkv
gst $bikes ! identity eos-after=100 ! videoconvert ! video/x-raw,format=Y444 \
  ! $x264 bitrate=500 ! h264parse ! matroskamux ! filesink location=yuv444.mkv
gst $bikes ! identity eos-after=100 ! videoconvert ! jpegenc quality=20 ! avimux ! filesink location=mjpeg.avi
gst $bikes ! identity eos-after=100 ! videoconvert ! video/x-raw,format=I420 \
  ! x265enc speed-preset=ultrafast bitrate=400 option-string="frame-threads=1:pools=1" ! h265parse ! matroskamux ! filesink location=h265.mkv
# identity drop-probability draws with libc rand(), never seeded: the same frames drop on every run.
gst videotestsrc num-buffers=100 pattern=ball ! video/x-raw,width=320,height=240,framerate=25/1,format=I420 \
  ! identity drop-probability=0.3 ! capssetter caps="video/x-raw,framerate=0/1" \
  ! $x264 ! h264parse ! matroskamux ! filesink location=vfr.mkv
gst videotestsrc num-buffers=50 pattern=smpte ! video/x-raw,width=320,height=240,framerate=25/1,format=I420 \
  ! $x264 key-int-max=25 ! h264parse ! mpegtsmux ! filesink location=seg1.ts
gst videotestsrc num-buffers=50 pattern=ball ! video/x-raw,width=640,height=480,framerate=25/1,format=I420 \
  ! $x264 key-int-max=25 ! h264parse ! mpegtsmux ! filesink location=seg2.ts
cat seg1.ts seg2.ts >caps-change.ts
rm -f seg1.ts seg2.ts
gst $bikes ! identity eos-after=100 ! videoconvert ! video/x-raw,format=I420 \
  ! $x264 bitrate=500 key-int-max=25 ! h264parse ! video/x-h264,stream-format=byte-stream \
  ! filesink location=no-timestamps.h264
rm -f gst.log
normalize audio-only.m4a audio-only.ogg ./*.mkv
"$python" -c '
import sys
data = open("h265.mkv", "rb").read()
assert data.count(b"V_MPEGH/ISO/HEVC") == 1
open("unknown-codec.mkv", "wb").write(data.replace(b"V_MPEGH/ISO/HEVC", b"V_QQQQQ/ISO/QQQQ"))
'

for f in "${files[@]}"; do
  [ -e "$f" ] || { echo "not built: $f" >&2; exit 1; }
  mv -f "$f" "$dest/$f"
done
echo "$stamp" >"$dest/.stamp"
log "$(du -sh "$dest" | cut -f1) in $dest"
