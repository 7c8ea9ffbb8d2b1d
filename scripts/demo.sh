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

# --from-time: descriptors produced before the subscriber connected are read from the log, so none
# is missed. The stream ends when the node stops at the end of the clip. Add --frames to see every
# descriptor, or --json for the decoded vectors.
"$bin" subscribe --addr http://127.0.0.1:50051 --from-time "$since" \
  --compare-video .deps/media/bikes.mp4
wait $node
trap - EXIT
