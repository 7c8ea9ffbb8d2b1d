#!/usr/bin/env bash
# make demo: runs the node on the bundled clip (one pass) and a subscriber that prints every
# analysed frame as a central system receives it, then a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/retina-edge
config=config/demo.toml

"$bin" run --config "$config" 2> >(sed 's/^/[node] /' >&2) &
node=$!
trap 'kill $node 2>/dev/null || true' EXIT

# --from-buffer: frames analysed before the subscriber connected are replayed, so none is missed;
# --include-empty: frames without objects are shown too. The stream ends when the node stops
# at the end of the clip.
"$bin" subscribe --addr http://127.0.0.1:50051 --from-buffer --include-empty \
  --compare-video .deps/media/bikes.mp4
wait $node
trap - EXIT
