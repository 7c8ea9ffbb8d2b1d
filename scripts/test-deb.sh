#!/usr/bin/env bash
# Tests the Debian package on this machine (make test-deb; root, or sudo: it is meant for a CI
# machine, since it installs the package for real):
#   1. dpkg -i: files where the unit and the config expect them, the system user, the state dir;
#   2. `retina-edge check` against the installed config, as the service's user;
#   3. an upgrade (the same package as version -2) over a changed conffile and some state: both kept,
#      without a conffile prompt;
#   4. dpkg -r keeps config, state and user; dpkg -P deletes config and state.
# The package is purged at the end, pass or fail. Usage: scripts/test-deb.sh PATH.deb
set -euo pipefail

deb=${1:?usage: test-deb.sh PATH.deb}
[ -f "$deb" ] || { echo "no such package: $deb" >&2; exit 1; }
deb=$(realpath "$deb")
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
conf=/etc/retina-edge/retina-edge.toml
state=/var/lib/retina-edge
unit=/lib/systemd/system/retina-edge.service
tmp=$(mktemp -d)
step() { printf '[test-deb] %s\n' "$*"; }
fail() { printf '[test-deb] FAIL: %s\n' "$*" >&2; exit 1; }
status() { dpkg-query -W -f='${db:Status-Abbrev}' retina-edge 2>/dev/null || true; }

if [ -n "$(status)" ] && [ "$(status)" != "un " ]; then
  fail "retina-edge is already installed here ($(status)); this test installs and purges it: remove it first (dpkg -P retina-edge)"
fi
[ -e /etc/retina-edge ] && fail "/etc/retina-edge exists but belongs to no package (scripts/install-systemd.sh?): not touching it"
cleanup() {
  "${sudo[@]}" dpkg -P retina-edge >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# </dev/null everywhere: a conffile prompt becomes a failure instead of a hang.
step "install $(basename "$deb")"
"${sudo[@]}" dpkg -i "$deb" </dev/null >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "dpkg -i"; }

for f in /usr/bin/retina-edge /usr/lib/retina-edge/libonnxruntime.so.1.32.0 "$unit" "$conf" \
  /usr/share/retina-edge/models/nanodet-g-416.onnx /usr/share/retina-edge/models/nanodet-g-416.toml \
  /usr/share/retina-edge/models/mobilenetv2-1280.onnx /usr/share/retina-edge/models/mobilenetv2-1280.toml \
  /usr/share/retina-edge/models/mobilenetv2-1280.projection.safetensors; do
  [ -f "$f" ] || fail "$f not installed"
done
dpkg-query -W -f='${Conffiles}\n' retina-edge | grep -q "^ $conf " || fail "$conf is not a conffile"
grep -q '^ExecStart=/usr/bin/retina-edge run --config /etc/retina-edge/retina-edge.toml$' "$unit" ||
  fail "the installed unit does not start /usr/bin/retina-edge with $conf"
uid=$(id -u retina-edge) || fail "no user retina-edge"
[ "$uid" -lt 1000 ] || fail "retina-edge is not a system user (uid $uid)"
[ "$(stat -c '%U:%G %a' "$state")" = "retina-edge:retina-edge 700" ] ||
  fail "$state is $(stat -c '%U:%G %a' "$state"), not retina-edge:retina-edge 700"
systemd-analyze security --offline=yes --threshold=20 "$unit" >/dev/null ||
  fail "the installed unit rates above 2.0"
# Unknown keys, bad values, missing binaries or users.
systemd-analyze verify --man=no "$unit" >"$tmp/verify.log" 2>&1 || { cat "$tmp/verify.log"; fail "systemd-analyze verify"; }
step "installed: binary, ONNX Runtime, models, unit, conffile, user $uid, $state 0700"

step "retina-edge check as the service user"
"${sudo[@]}" runuser -u retina-edge -- /usr/bin/retina-edge check --config "$conf" >"$tmp/check.log" 2>&1 ||
  { cat "$tmp/check.log"; fail "retina-edge check --config $conf"; }
grep -q "is valid$" "$tmp/check.log" || { cat "$tmp/check.log"; fail "check did not say valid"; }

step "upgrade to -2 over a changed conffile and existing state"
"${sudo[@]}" sh -c "echo '# changed by test-deb' >> $conf; echo kept > $state/test-deb-marker"
# The same files as a later version: what an upgrade runs (prerm upgrade, postinst configure OLD).
dpkg-deb -R "$deb" "$tmp/pkg"
version=$(sed -n 's/^Version: //p' "$tmp/pkg/DEBIAN/control")
sed -i "s/^Version: .*/Version: ${version%-*}-2/" "$tmp/pkg/DEBIAN/control"
dpkg-deb -Zgzip -z1 --root-owner-group -b "$tmp/pkg" "$tmp/upgrade.deb" >/dev/null
"${sudo[@]}" dpkg -i "$tmp/upgrade.deb" </dev/null >"$tmp/upgrade.log" 2>&1 || { cat "$tmp/upgrade.log"; fail "dpkg -i (upgrade)"; }
[ "$(dpkg-query -W -f='${Version}' retina-edge)" = "${version%-*}-2" ] || fail "not upgraded"
grep -q '^# changed by test-deb$' "$conf" || fail "the upgrade replaced the changed $conf"
[ -f "$conf.dpkg-new" ] || [ -f "$conf.dpkg-dist" ] && fail "the upgrade left $conf.dpkg-new/.dpkg-dist"
[ "$("${sudo[@]}" cat "$state/test-deb-marker")" = kept ] || fail "the upgrade lost $state"
"${sudo[@]}" runuser -u retina-edge -- /usr/bin/retina-edge check --config "$conf" >/dev/null 2>&1 ||
  fail "check after the upgrade"
step "upgraded: changed conffile kept, state kept, check still passes"

step "remove (dpkg -r)"
"${sudo[@]}" dpkg -r retina-edge </dev/null >"$tmp/remove.log" 2>&1 || { cat "$tmp/remove.log"; fail "dpkg -r"; }
[ "$(status)" = "rc " ] || fail "status after dpkg -r is '$(status)', not rc (config-files)"
[ ! -e /usr/bin/retina-edge ] && [ ! -e /usr/lib/retina-edge ] && [ ! -e /usr/share/retina-edge ] && [ ! -e "$unit" ] ||
  fail "dpkg -r left program files"
grep -q '^# changed by test-deb$' "$conf" || fail "dpkg -r removed or replaced $conf"
[ -f "$state/test-deb-marker" ] || fail "dpkg -r removed the state in $state"
id -u retina-edge >/dev/null || fail "dpkg -r removed the user"
step "removed: program files gone; config, state and user kept"

step "purge (dpkg -P)"
"${sudo[@]}" dpkg -P retina-edge </dev/null >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log"; fail "dpkg -P"; }
[ -z "$(status)" ] || [ "$(status)" = "un " ] || fail "status after dpkg -P is '$(status)'"
[ ! -e /etc/retina-edge ] || fail "dpkg -P left /etc/retina-edge: $(ls -A /etc/retina-edge)"
[ ! -e "$state" ] && [ ! -e /var/cache/retina-edge ] || fail "dpkg -P left $state or /var/cache/retina-edge"
step "purged: config and state gone (the system user retina-edge is kept, as Debian does)"
step "ok"
