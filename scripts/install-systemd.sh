#!/usr/bin/env bash
# Installs a built retina-edge as a systemd service (run as root after `make deb`), through the
# Debian package, which is now the one way to install it (README, "Installing the package"):
#   /usr/bin/retina-edge, /usr/lib/retina-edge (ONNX Runtime), /usr/share/retina-edge/models,
#   /etc/retina-edge/retina-edge.toml (a conffile), /lib/systemd/system/retina-edge.service,
#   the system user retina-edge, and /var/lib/retina-edge (camera state, descriptor log).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
deb=$(ls -t "$repo"/target/debian/retina-edge_*_amd64.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "build the package first: make deb" >&2; exit 1; }

dpkg -i "$deb"
echo "installed $(basename "$deb"); set node.id and cameras in /etc/retina-edge/retina-edge.toml, then:"
echo "  systemctl enable --now retina-edge"
