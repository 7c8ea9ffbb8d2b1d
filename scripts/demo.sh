#!/usr/bin/env bash
# make demo: runs the node on the bundled clip (one pass) and a subscriber that prints every track
# event as a central system receives it, then a summary of the stream and its size.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/retina-edge
config=config/demo.toml

# The node keeps every descriptor in its log (config/demo.log.sqlite), also those of earlier runs:
# the subscriber starts at this run's first capture time.
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
"$bin" run --config "$config" 2> >(sed 's/^/[node] /' >&2) &
node=$!
trap 'kill $node 2>/dev/null || true' EXIT

# The video stream: the first person seen in 5 frames or more whose track ends is looked at again as the centre would ask for it, a
# JPEG of its best view cropped around it with the box drawn and faces pixelated
# (target/demo-track.jpg); the node records the export in the camera's stream.
(
  track=$("$bin" subscribe --addr http://127.0.0.1:50051 --from-time "$since" --json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    for event in json.loads(line).get("track_events", []):
        if event["kind"] == "ended" and event["class_name"] == "person" and event["summary"]["frames_seen"] >= 5:
            print(event["track_id"])
            sys.exit(0)' || true)
  # (The subscriber dies of SIGPIPE once the first ended track is read: pipefail's status.)
  if [ -z "$track" ]; then
    echo "[snapshot] no person's track ended while the node ran" >&2
    exit 1
  fi
  "$bin" snapshot --addr http://127.0.0.1:50051 --camera bikes --track "$track" --crop-margin 0.3 --draw-box \
    -o target/demo-track.jpg | sed 's/^/[snapshot] /'
) &
snapshot=$!

# --from-time: descriptors produced before the subscriber connected are read from the log, so none
# is missed. The stream ends when the node stops at the end of the clip. Add --frames to see every
# descriptor, or --json for the decoded vectors.
"$bin" subscribe --addr http://127.0.0.1:50051 --from-time "$since" \
  --compare-video .deps/media/bikes.mp4
wait $snapshot
wait $node
trap - EXIT
