#!/usr/bin/env bash
# Installs a built retina-edge as a systemd service (run as root after `make build`):
#   /opt/retina-edge/{bin,lib,models}   binary, ONNX Runtime library, models + manifests
#   /etc/retina-edge/retina-edge.toml   config (kept if it exists)
#   /var/lib/retina-edge/cameras.toml   cameras changed over gRPC (systemd's StateDirectory)
#   /var/lib/retina-edge/log.sqlite     the durable descriptor log
#   user and group retina-edge          the service's own, unprivileged
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/retina-edge
etc=/etc/retina-edge

[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
[ -x "$repo/target/release/retina-edge" ] || { echo "build first: make build" >&2; exit 1; }

id -u retina-edge >/dev/null 2>&1 ||
  useradd --system --no-create-home --home-dir "$prefix" --shell /usr/sbin/nologin retina-edge

install -d "$prefix/bin" "$prefix/lib" "$prefix/models" "$etc"
install -m 0755 "$repo/target/release/retina-edge" "$prefix/bin/"
install -m 0644 "$repo"/.deps/onnxruntime/libonnxruntime.so.* "$prefix/lib/"
# Everything a manifest names: ONNX files and the embedder's projection.
install -m 0644 "$repo"/models/*.onnx "$repo"/models/*.toml "$repo"/models/*.safetensors "$prefix/models/"
install -m 0644 "$repo/README.md" "$prefix/"

if [ ! -f "$etc/retina-edge.toml" ]; then
  lib=$(basename "$repo"/.deps/onnxruntime/libonnxruntime.so.*)
  {
    sed -e "s#^onnxruntime_library = .*#onnxruntime_library = \"$prefix/lib/$lib\"#" \
        -e "s#\.\./models/#$prefix/models/#g" \
        -e "s#^\[node\]#[node]\ncamera_state_file = \"/var/lib/retina-edge/cameras.toml\"#" \
        "$repo/config/retina-edge.toml"
    printf '\n[log]\npath = "/var/lib/retina-edge/log.sqlite"\n'
  } > "$etc/retina-edge.toml"
  echo "wrote $etc/retina-edge.toml: set node.id and your cameras, then start the service"
fi

install -m 0644 "$repo/systemd/retina-edge.service" /etc/systemd/system/
systemctl daemon-reload
echo "installed; start with: systemctl enable --now retina-edge"
