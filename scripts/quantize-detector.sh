#!/usr/bin/env bash
# Quantise the f32 detector to int8 (static, QDQ) with ONNX Runtime's quantisation tool,
# calibrated on real frames of the bundled clips that the node itself decodes and pre-processes.
#
#   scripts/quantize-detector.sh [quantize_detector.py options]
#
# Writes: models/nanodet-g-416-int8.onnx (the manifest beside it is hand-written).
# Needs:  the repo's build deps (`make deps`: GStreamer, the ONNX Runtime library, the clips),
#         cargo, python3.11 and PyPI. About 3 min plus the first build of the bench target.
#
# Steps: (1) the bench target `detector_int8` writes the calibration inputs (every 2nd frame of
# the first 40 % of bikes.mp4 and carphone_pristine.mp4, through the node's ingest stage and
# `fill_input`, with the f32 manifest's input spec); (2) a temporary venv with pinned packages
# runs scripts/convert/quantize_detector.py on them. `make eval-int8` then compares the two
# models on the last 50 % of each clip, which calibration never sees.
#
# QUANT_VENV=DIR reuses (or creates) a venv there instead of a temporary one.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MANIFEST="$REPO/models/nanodet-g-416.toml"
OUTPUT="${OUTPUT:-$REPO/models/nanodet-g-416-int8.onnx}"
# The same ONNX Runtime as the node's library (.deps/onnxruntime came from this wheel).
QUANT_PKGS=(onnxruntime==1.32.0 onnx==1.23.2 numpy==2.4.6 sympy==1.14.0 protobuf==7.36.2 ml_dtypes==0.7.0)

WORK="$(mktemp -d -t retina-quantize.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
log() { printf '\n== %s\n' "$*"; }

VENV="${QUANT_VENV:-$WORK/venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV (${QUANT_PKGS[*]})"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${QUANT_PKGS[@]}"

log "calibration frames (the node's ingest and pre-processing)"
(cd "$REPO" && cargo bench --locked --bench detector_int8 -- --write-calibration "$WORK/calibration")

log "quantising"
"$VENV/bin/python" "$REPO/scripts/convert/quantize_detector.py" "$MANIFEST" "$WORK/calibration" "$OUTPUT" "$@"

log "sha256 (update models/README.md if it changed)"
sha256sum "$OUTPUT"
