#!/usr/bin/env bash
# Runs the Debian package's hardened unit under a REAL systemd and checks what README ("Running
# under systemd", "Deploying on a street network") had not tried under it:
#   1. an RTSP camera that asks for a password (digest auth), streaming into the node;
#   2. TLS with client certificates (mTLS) and a bearer token, with `retina-edge subscribe`;
#   3. the watchdog (WatchdogSec=30): on while streaming for 70+ s with no restart, and (WEDGE=1)
#      a wedged node (SIGSTOP) killed and restarted by systemd;
#   4. secrets passed with systemd's LoadCredential= (USE_CREDENTIALS=1): the TLS key, the token
#      file and the camera password, named in the config as "credential:NAME".
# Also: seccomp, no_new_privs and no capabilities in /proc/PID/status, and `systemctl stop` ending
# the node with status 0. Prints PASS/FAIL per check; exits non-zero on any FAIL.
#
# Usage (root): scripts/nspawn-unit-check.sh PATH/retina-edge_*.deb
# Environment:
#   USE_CREDENTIALS=1   secrets through LoadCredential= and "credential:NAME" (needs a binary that
#                       knows that syntax); 0: plain 0600 files owned by the service user
#   CAMERA_PASSWORD=    where the node reads the camera password: credential (default with
#                       USE_CREDENTIALS=1), file (password_file = a plain 0600 path owned by the
#                       service user: default with 0), inline (`password =` in a config made 0600
#                       and the service user's: the only way binaries before 49ac6ea know)
#   WEDGE=1             stage a wedge (SIGSTOP the node) and expect a watchdog restart (~35 s more)
#   STREAM_SECONDS=75   how long to stream while watching the watchdog (>= two 30 s periods)
#   GRPC_PORT=50051     the node's gRPC port on loopback (shared with the host: see below)
#   CLIP=               the footage the RTSP camera serves (default .deps/media/bikes.mp4)
#   ALLOW_SYSCALLS=     system calls allowed back by a drop-in (default none: the unit as shipped)
#   HOLD=1              on a failed start, keep the container up to look inside (debugging)
#   LOG_DIR=            if set, the unit's journal, the container console and the camera log are
#                       copied there before cleanup
#
# Why a container: the CI machine's PID 1 is not systemd, so `systemctl`/`systemd-run` cannot run
# the unit on the host. systemd-nspawn boots the host's own systemd (and the host's installed
# GStreamer, openssl, ...) on a read-only bind mount of the host's `/`, with a tmpfs overlay on top
# (--volatile=overlay): dpkg -i, the config and the keys all land in the overlay and vanish with
# the container; the host's files are never written. No private network: the container shares the
# host's loopback, so the camera served from the host is reachable by the node.
set -euo pipefail

deb=${1:?usage: nspawn-unit-check.sh PATH.deb}
[ -f "$deb" ] || { echo "no such package: $deb" >&2; exit 2; }
deb=$(realpath "$deb")
[ "$(id -u)" -eq 0 ] || { echo "run as root (mounts, systemd-nspawn)" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
USE_CREDENTIALS=${USE_CREDENTIALS:-1}
if [ "$USE_CREDENTIALS" = 1 ]; then CAMERA_PASSWORD=${CAMERA_PASSWORD:-credential}; else CAMERA_PASSWORD=${CAMERA_PASSWORD:-file}; fi
case "$CAMERA_PASSWORD" in credential | inline | file) ;; *) echo "CAMERA_PASSWORD: credential, inline or file" >&2; exit 2 ;; esac
# Credentials are all-or-nothing here: with them, the secrets stay root's and unreadable by the node.
[ "$CAMERA_PASSWORD" = credential ] && [ "$USE_CREDENTIALS" != 1 ] &&
  { echo "CAMERA_PASSWORD=credential needs USE_CREDENTIALS=1" >&2; exit 2; }
[ "$USE_CREDENTIALS" = 1 ] && [ "$CAMERA_PASSWORD" != credential ] &&
  { echo "USE_CREDENTIALS=1 takes the camera password as a credential too" >&2; exit 2; }
WEDGE=${WEDGE:-1}
STREAM_SECONDS=${STREAM_SECONDS:-75}
GRPC_PORT=${GRPC_PORT:-50051}
CLIP=$(realpath "${CLIP:-$repo/.deps/media/bikes.mp4}")
LOG_DIR=${LOG_DIR:-}
camera_id=gate-rtsp
machine=retina-unit-check

say() { printf '[nspawn-unit-check] %s\n' "$*"; }
failures=0
pass() { printf 'PASS  %-34s %s\n' "$1" "$2"; }
fail() { printf 'FAIL  %-34s %s\n' "$1" "$2"; failures=$((failures + 1)); }
die() { printf '[nspawn-unit-check] FATAL: %s\n' "$*" >&2; exit 1; }

command -v systemd-nspawn >/dev/null || die "systemd-nspawn missing: apt-get install systemd-container"
command -v openssl >/dev/null || die "openssl missing"
[ -f "$CLIP" ] || die "no clip at $CLIP (scripts/setup-deps.sh fetches it)"
# The system python (not a pyenv shim): python3-gi and the GstRtspServer typelib are Debian packages.
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); gi.require_version("GstRtsp", "1.0")' 2>/dev/null ||
  die "the RTSP camera needs python3-gi and gir1.2-gst-rtsp-server-1.0 (apt-get install them)"
# The container shares the host's network: a port in use on the host is in use for the node.
if ss -ltnH "sport = :$GRPC_PORT" | grep -q .; then die "127.0.0.1:$GRPC_PORT is in use on this machine: set GRPC_PORT"; fi

tmp=$(mktemp -d /tmp/nspawn-unit-check.XXXXXX)
root=$tmp/root    # the host's / seen through a bind mount (nspawn refuses / itself)
share=$tmp/share  # bound into the container at /srv/check: the package, the camera, the PKI
mkdir -p "$root" "$share/pki"
chmod 700 "$tmp"
nspawn_pid= camera_pid=
created_run_nspawn=0
[ -e /run/systemd/nspawn ] || created_run_nspawn=1

cleanup() {
  local rc=$?
  set +e
  if [ -n "$LOG_DIR" ]; then
    mkdir -p "$LOG_DIR"
    [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null &&
      inside journalctl -u retina-edge --no-pager -o short-monotonic >"$LOG_DIR/retina-edge.journal" 2>&1
    cp "$tmp/console.log" "$LOG_DIR/container-console.log" 2>/dev/null
    cp "$tmp/camera.log" "$LOG_DIR/camera.log" 2>/dev/null
    cp "$share"/*.out "$LOG_DIR/" 2>/dev/null
  fi
  if [ -n "$camera_pid" ]; then kill "$camera_pid" 2>/dev/null; wait "$camera_pid" 2>/dev/null; fi
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    # SIGTERM to systemd-nspawn --boot asks the container's systemd for an orderly poweroff
    # (stopping the node first); SIGKILL only if that hangs.
    kill -TERM "$nspawn_pid"
    for _ in $(seq 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$nspawn_pid" 2>/dev/null && { say "container did not power off in 60 s: SIGKILL"; kill -KILL "$nspawn_pid"; }
    wait "$nspawn_pid" 2>/dev/null
  fi
  # The overlay and its tmpfs lived in nspawn's own mount namespace and are gone with it; only
  # the bind mount is ours. Never rm -rf while it is mounted: that would delete the host's /.
  if mountpoint -q "$root"; then umount "$root" || umount -l "$root"; fi
  if mountpoint -q "$root" || ! rmdir "$root"; then
    say "WARNING: $root is still mounted or not empty: left $tmp in place, remove it by hand"
  else
    rm -rf "$tmp"
  fi
  # nspawn leaves its (empty) lock and propagation directories in /run, which is on disk here.
  if [ "$created_run_nspawn" = 1 ]; then
    rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn/locks /run/systemd/nspawn 2>/dev/null
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- The camera: a real RTSP server with digest auth, on the host's loopback -----------------
# What tests/common/rtsp.rs does in Rust, in Python: the clip decoded once, then re-encoded live
# (x264, a keyframe a second, timestamps from the clock) and looped, so it never ends.
cam_user=viewer
openssl rand -hex 16 >"$share/cam-password"
chmod 600 "$share/cam-password"
cat >"$share/camera.py" <<'PY'
"""A password-protected RTSP camera on 127.0.0.1 serving a clip looped and re-encoded live.
Usage: camera.py CLIP USER PASSWORD_FILE PORT_FILE (the password is not on the command line)."""
import os
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

Gst.init(None)
clip, user, password_file, port_file = sys.argv[1:5]
with open(password_file) as f:
    password = f.read().strip()

decoder = Gst.parse_launch(
    "filesrc name=file ! decodebin ! videoconvert ! video/x-raw,format=I420 ! appsink name=sink sync=false"
)
decoder.get_by_name("file").set_property("location", clip)
sink = decoder.get_by_name("sink")
decoder.set_state(Gst.State.PLAYING)
frames, caps = [], None
while True:
    sample = sink.emit("pull-sample")
    if sample is None:
        break
    caps = sample.get_caps()
    frames.append(sample.get_buffer())
decoder.set_state(Gst.State.NULL)
if not frames:
    sys.exit(f"camera: no frames decoded from {clip}")
s = caps.get_structure(0)
ok, num, den = s.get_fraction("framerate")
if not ok or num == 0:
    num, den = 25, 1
period = den / num
print(f"camera: {len(frames)} frames {s.get_value('width')}x{s.get_value('height')} at {num}/{den} fps", flush=True)
served = 0


def feed(appsrc, alive):
    """Pushes frames at the clip's rate, stamped with the pipeline's running time at push."""
    global served
    index, nxt = 0, time.monotonic()
    while alive[0]:
        nxt += period
        wait = nxt - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            nxt = time.monotonic()  # fell behind: skip ahead rather than burst
        pts = appsrc.get_current_running_time()
        if pts == Gst.CLOCK_TIME_NONE:
            continue  # not playing yet
        frame = frames[index % len(frames)].copy()
        frame.pts, frame.dts, frame.duration = pts, Gst.CLOCK_TIME_NONE, int(period * Gst.SECOND)
        if appsrc.emit("push-buffer", frame) == Gst.FlowReturn.OK:
            index += 1
            served += 1


def configure(_factory, media):
    # Reached only by a client that passed digest auth (the role below guards construction).
    appsrc = media.get_element().get_by_name("src")
    appsrc.set_property("caps", caps)
    alive = [True]
    media.connect("unprepared", lambda _m: alive.__setitem__(0, False))
    threading.Thread(target=feed, args=(appsrc, alive), daemon=True).start()
    print("camera: an authenticated client is streaming", flush=True)


server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service("0")
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( appsrc name=src is-live=true format=time "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=800 "
    "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
factory.set_shared(True)
factory.connect("media-configure", configure)
# Digest only, as most cameras default to: a client without the password gets 401.
auth = GstRtspServer.RTSPAuth()
token = GstRtspServer.RTSPToken()
token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
auth.add_digest(user, password, token)
auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
server.set_auth(auth)
factory.add_role_from_structure(
    Gst.Structure.from_string("viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0]
)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.get_bound_port()))
os.rename(port_file + ".tmp", port_file)
print(f"camera: rtsp://127.0.0.1:{server.get_bound_port()}/cam (digest auth, user {user})", flush=True)


def report():
    print(f"camera: {served} frames served", flush=True)
    return True


GLib.timeout_add_seconds(30, report)
GLib.MainLoop().run()
PY
say "camera: serving $(basename "$CLIP") over RTSP with digest auth"
nice -n 19 /usr/bin/python3 "$share/camera.py" "$CLIP" "$cam_user" "$share/cam-password" "$share/camera.port" >"$tmp/camera.log" 2>&1 &
camera_pid=$!
for _ in $(seq 60); do [ -s "$share/camera.port" ] && break; kill -0 "$camera_pid" 2>/dev/null || break; sleep 1; done
[ -s "$share/camera.port" ] || { cat "$tmp/camera.log"; die "the RTSP camera did not start"; }
cam_port=$(cat "$share/camera.port")
say "camera: rtsp://127.0.0.1:$cam_port/cam"

# --- The container ---------------------------------------------------------------------------
cp "$deb" "$share/retina-edge.deb"
# A plain (non-recursive) bind: the host's /proc, /sys, /dev stay out; nspawn mounts its own.
# Read-only and private, so nothing the container does can reach the host's files or mounts.
mount --bind / "$root"
mount -o remount,bind,ro "$root"
mount --make-private "$root"
# --volatile=overlay: a tmpfs overlay over the read-only tree; --register=no --keep-unit: there is
# no systemd-machined or host systemd to register with. Arguments after the options go to the
# container's systemd as its kernel command line: units the host enables that have no business
# here are masked (PostgreSQL would listen on the shared loopback; apt timers would upgrade).
say "booting systemd in a container on the host's / (volatile overlay)"
nice -n 19 systemd-nspawn --directory="$root" --machine="$machine" --boot --volatile=overlay \
  --register=no --keep-unit --console=read-only --bind="$share:/srv/check" \
  systemd.mask=postgresql.service systemd.mask=apt-daily.timer systemd.mask=apt-daily-upgrade.timer \
  systemd.mask=man-db.timer systemd.mask=e2scrub_all.timer systemd.mask=fstrim.timer \
  systemd.mask=dpkg-db-backup.timer </dev/null >"$tmp/console.log" 2>&1 &
nspawn_pid=$!

# The container's PID 1 is the child of systemd-nspawn whose name is systemd.
leader=
for _ in $(seq 60); do
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$tmp/console.log"; die "systemd-nspawn exited"; }
  for c in $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null); do
    [ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ] && leader=$c
  done
  [ -n "$leader" ] && break
  sleep 1
done
[ -n "$leader" ] || die "no systemd in the container"

# Runs a command in the container (its mount, PID, IPC, UTS and cgroup namespaces), with a clean
# environment: nothing of the host's shell (RETINA_TOKEN, PATH shims) leaks in.
inside() {
  nsenter --target "$leader" --mount --uts --ipc --pid --cgroup --root --wd -- \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
# HOLD=1: a failed start keeps the container up for a look inside, until $tmp/hold is removed.
hold() {
  [ "${HOLD:-0}" = 1 ] || return 0
  touch "$tmp/hold"
  say "holding: nsenter -t $leader -m -u -i -p -C -r -w bash; rm $tmp/hold to end"
  while [ -e "$tmp/hold" ]; do sleep 2; done
}
state=$(timeout 120 nsenter --target "$leader" --mount --pid -- systemctl is-system-running --wait 2>&1 || true)
case "$state" in running | degraded) say "container systemd: $state" ;; *) tail -20 "$tmp/console.log"; die "container did not boot: $state" ;; esac
# Everything below writes into the container: make sure that is the overlay, not the host.
[ "$(inside findmnt -no FSTYPE /)" = overlay ] || die "the container's / is not the volatile overlay: refusing to write"
inside systemctl --version | head -1 | sed 's/^/[nspawn-unit-check] container: /'

# --- Package, PKI, token, config -------------------------------------------------------------
# policy-rc.d exits 101 on this host (Docker-style), which forbids dpkg to start, restart or stop
# services. Removed in the overlay only, so the package behaves as on a real box.
inside rm -f /usr/sbin/policy-rc.d
say "dpkg -i $(basename "$deb")"
inside dpkg -i /srv/check/retina-edge.deb </dev/null >"$share/dpkg.out" 2>&1 || { cat "$share/dpkg.out"; die "dpkg -i failed"; }

# Certificates as README ("Deploying on a street network") makes them: a CA for nodes, the node's
# certificate for 127.0.0.1, and a CA for clients with one client certificate (clientAuth).
inside bash -euo pipefail -c '
  cd /srv/check/pki
  ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
  openssl req -x509 $ec -days 2 -subj "/CN=test nodes CA" -keyout nodes-ca.key -out nodes-ca.pem 2>/dev/null
  openssl req $ec -subj "/CN=box-test" -keyout node.key -out node.csr 2>/dev/null
  openssl x509 -req -in node.csr -CA nodes-ca.pem -CAkey nodes-ca.key -days 2 -out node.pem \
    -extfile <(printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth") 2>/dev/null
  openssl req -x509 $ec -days 2 -subj "/CN=test clients CA" -keyout clients-ca.key -out clients-ca.pem 2>/dev/null
  openssl req $ec -subj "/CN=central" -keyout central.key -out central.csr 2>/dev/null
  openssl x509 -req -in central.csr -CA clients-ca.pem -CAkey clients-ca.key -days 2 -out central.pem \
    -extfile <(printf "extendedKeyUsage=clientAuth") 2>/dev/null
  chmod 600 *.key
  install -d -m 755 /etc/retina-edge/tls
  install -m 644 node.pem clients-ca.pem /etc/retina-edge/tls/'

# Secrets. With credentials: root-owned 0600 files the service cannot read itself; systemd reads
# them at start and hands the node a private copy in $CREDENTIALS_DIRECTORY. Without: 0600 files
# owned by the service user, as README says a key must be.
if [ "$USE_CREDENTIALS" = 1 ]; then
  secrets=/etc/retina-edge/credentials owner=root
else
  secrets=/etc/retina-edge/secrets owner=retina-edge
fi
inside install -d -m 700 -o "$owner" -g "$owner" "$secrets"
inside install -m 600 -o "$owner" -g "$owner" /srv/check/pki/node.key "$secrets/tls.key"
inside install -m 600 -o "$owner" -g "$owner" /srv/check/cam-password "$secrets/cam-password"
# The token is printed once (stdout); the file keeps its hash only.
inside retina-edge token add central --scope subscribe --file "$secrets/tokens.toml" \
  >"$share/pki/central.token" 2>"$share/token.out" || { cat "$share/token.out"; die "token add"; }
inside chown "$owner:$owner" "$secrets/tokens.toml"
chmod 600 "$share/pki/central.token"

if [ "$USE_CREDENTIALS" = 1 ]; then
  key_ref=credential:tls.key tokens_ref=credential:tokens.toml
else
  key_ref=$secrets/tls.key tokens_ref=$secrets/tokens.toml
fi
case "$CAMERA_PASSWORD" in
  credential) password_line='password_file = "credential:cam-password"' ;;
  file) password_line="password_file = \"$secrets/cam-password\"" ;;
  inline) password_line="password = \"$(cat "$share/cam-password")\"" ;;
esac
# The package's config (loopback gRPC, metrics), plus TLS, tokens and the camera.
inside sed -i "s/^grpc_listen = .*/grpc_listen = \"127.0.0.1:$GRPC_PORT\"/" /etc/retina-edge/retina-edge.toml
inside tee -a /etc/retina-edge/retina-edge.toml >/dev/null <<EOF

# --- added by scripts/nspawn-unit-check.sh ---
[tls]
cert = "/etc/retina-edge/tls/node.pem"
key = "$key_ref"
client_ca = "/etc/retina-edge/tls/clients-ca.pem"

[auth]
tokens_file = "$tokens_ref"

[[cameras]]
id = "$camera_id"
uri = "rtsp://127.0.0.1:$cam_port/cam"
username = "$cam_user"
$password_line
analysis_fps = 5.0
EOF
# A password written into the config makes the config a secret: the node refuses a config others
# may read that holds one, so it becomes the service user's, 0600.
[ "$CAMERA_PASSWORD" = inline ] && inside sh -c 'chown retina-edge:retina-edge /etc/retina-edge/retina-edge.toml && chmod 600 /etc/retina-edge/retina-edge.toml'

loadcred=()
if [ "$USE_CREDENTIALS" = 1 ]; then
  # A drop-in, as an operator would add it; the packaged unit stays as shipped.
  inside install -d /etc/systemd/system/retina-edge.service.d
  inside tee /etc/systemd/system/retina-edge.service.d/50-credentials.conf >/dev/null <<EOF
[Service]
LoadCredential=tls.key:$secrets/tls.key
LoadCredential=tokens.toml:$secrets/tokens.toml
LoadCredential=cam-password:$secrets/cam-password
EOF
  inside systemctl daemon-reload
  loadcred=(-p "LoadCredential=tls.key:$secrets/tls.key" -p "LoadCredential=tokens.toml:$secrets/tokens.toml"
    -p "LoadCredential=cam-password:$secrets/cam-password")
fi

# ALLOW_SYSCALLS: system calls to allow back beyond the shipped unit's, as a drop-in. Empty by
# default: the unit is tested as shipped. (While it loads a model, ONNX Runtime 1.32 pins a thread
# to each CPU in turn, sched_setaffinity(0, {0}), then {1}: seen with strace -k outside the unit,
# whatever intra_op_threads. ~@resources forbids it, and the unit of 49ac6ea is killed with SIGSYS
# at start on this 2-CPU machine; ALLOW_SYSCALLS=sched_setaffinity gets past it.)
if [ -n "${ALLOW_SYSCALLS:-}" ]; then
  inside install -d /etc/systemd/system/retina-edge.service.d
  printf '[Service]\nSystemCallFilter=%s\n' "$ALLOW_SYSCALLS" |
    inside tee /etc/systemd/system/retina-edge.service.d/60-allow-syscalls.conf >/dev/null
  inside systemctl daemon-reload
  say "NOTE: unit changed by a drop-in: SystemCallFilter=$ALLOW_SYSCALLS allowed back"
fi

# `retina-edge check` as the service would see the config: its user, and with credentials the same
# LoadCredential= (through a transient unit, since only systemd makes $CREDENTIALS_DIRECTORY).
if inside systemd-run --quiet --wait --pipe -p User=retina-edge "${loadcred[@]}" \
  /usr/bin/retina-edge check --config /etc/retina-edge/retina-edge.toml </dev/null >"$share/check.out" 2>&1 &&
  grep -q 'is valid' "$share/check.out"; then
  pass "config check" "$(grep 'is valid' "$share/check.out" | tail -1 | cut -c1-90)"
else
  fail "config check" "$(tail -3 "$share/check.out" | tr '\n' ' ' | cut -c1-200)"
fi

# --- Start ------------------------------------------------------------------------------------
show() { inside systemctl show retina-edge -p "$1" --value; }
# Enabled, as README's `systemctl enable --now` does: multi-user.target then refers to the unit,
# so systemd keeps it loaded once stopped and `systemctl show` still reports how the node exited
# (an unreferenced inactive unit is unloaded, and its ExecMain* read as a fresh unit's zeros).
inside systemctl enable retina-edge 2>/dev/null
# Type=notify: returns once the node sent READY=1 (models loaded, gRPC listening), or fails.
say "systemctl start retina-edge"
if ! inside timeout 240 systemctl start retina-edge; then
  fail "systemctl start" "$(show Result) $(show ExecMainStatus)"
  inside journalctl -u retina-edge --no-pager -n 30 | sed 's/^/    /'
  # A seccomp kill is logged by the kernel (audit type 1326) with the system call's number.
  dmesg 2>/dev/null | grep 'type=1326' | tail -1 | grep -o 'comm=.*syscall=[0-9]*' | sed 's/^/    kernel: /' || true
  hold
  exit 1
fi
pid=$(show MainPID)
started=$(date +%s)
pass "systemctl start (Type=notify)" "active after READY=1, MainPID $pid, user $(inside ps -o user= -p "$pid")"

# --- Hardening: what the kernel says about the running node ----------------------------------
status=$(inside cat /proc/"$pid"/status)
seccomp=$(awk '/^Seccomp:/ {print $2}' <<<"$status")
nnp=$(awk '/^NoNewPrivs:/ {print $2}' <<<"$status")
capeff=$(awk '/^CapEff:/ {print $2}' <<<"$status")
capbnd=$(awk '/^CapBnd:/ {print $2}' <<<"$status")
evidence="Seccomp: $seccomp NoNewPrivs: $nnp CapEff: $capeff CapBnd: $capbnd uid_map: $(inside cat /proc/"$pid"/uid_map | tr -s ' \n' ' ')"
if [ "$seccomp" = 2 ] && [ "$nnp" = 1 ] && [ "$capeff" = 0000000000000000 ]; then
  pass "seccomp, no_new_privs, no caps" "$evidence"
else
  fail "seccomp, no_new_privs, no caps" "$evidence"
fi

# --- Secrets as the node got them --------------------------------------------------------------
if [ "$USE_CREDENTIALS" = 1 ]; then
  creds=$(inside ls -l /run/credentials/retina-edge.service/ 2>&1 | awk 'NR>1 {print $1, $3, $NF}' | tr '\n' ';')
  env_dir=$(inside cat /proc/"$pid"/environ | tr '\0' '\n' | grep '^CREDENTIALS_DIRECTORY=' || true)
  n=$(grep -o 'r--------' <<<"$creds" | wc -l)
  if [ "$n" -ge 3 ] && [ -n "$env_dir" ] && ! inside grep -q "$(cat "$share/cam-password")" /etc/retina-edge/retina-edge.toml; then
    pass "LoadCredential= (3 secrets)" "$env_dir: $creds; config holds no secret"
  else
    fail "LoadCredential= (3 secrets)" "$env_dir: $creds"
  fi
else
  say "secrets: plain 0600 files in $secrets owned by $owner; camera password: $CAMERA_PASSWORD"
fi

# --- TLS, mTLS and the token: what a client without one of them gets -----------------------------
pki=/srv/check/pki
sub=(retina-edge subscribe --addr "https://127.0.0.1:$GRPC_PORT" --ca-cert $pki/nodes-ca.pem)
if out=$(inside timeout 30 "${sub[@]}" --connect-timeout-seconds 5 --token-file $pki/central.token --quiet --max-frames 1 2>&1); then
  fail "mTLS: no client cert refused" "subscribe without a client certificate succeeded"
else
  printf '%s\n' "$out" >"$share/no-client-cert.out"
  # The client sees the handshake end (rustls: the server's alert that a certificate is required).
  pass "mTLS: no client cert refused" "$(grep -o -iE -m1 '(alert|certificate)[^,)]{0,60}' <<<"$out" || tail -1 <<<"$out" | cut -c1-110)"
fi
if out=$(inside timeout 30 "${sub[@]}" --connect-timeout-seconds 5 --cert $pki/central.pem --key $pki/central.key --quiet --max-frames 1 2>&1); then
  fail "token: none refused" "subscribe without a token succeeded"
elif grep -qiE 'unauthenticated|valid authentication credentials' <<<"$out"; then
  # tonic prints UNAUTHENTICATED by its description: "does not have valid authentication credentials".
  pass "token: none refused" "UNAUTHENTICATED: $(grep -m1 -o 'message: .\{0,70\}' <<<"$out")"
else
  fail "token: none refused" "not UNAUTHENTICATED: $(tail -1 <<<"$out" | cut -c1-110)"
fi

# --- Streaming for two watchdog periods: descriptors from the RTSP camera, watchdog pings, no restart
wd_usec=$(show WatchdogUSec)
[ "$wd_usec" = 30s ] && pass "watchdog on" "WatchdogUSec=$wd_usec" || fail "watchdog on" "WatchdogUSec=$wd_usec"
say "subscribing over mTLS with the token for ${STREAM_SECONDS} s, watching the watchdog"
status_before=$(show StatusText)
inside timeout "$STREAM_SECONDS" "${sub[@]}" --cert $pki/central.pem --key $pki/central.key \
  --token-file $pki/central.token --json >"$share/subscribe.out" 2>"$share/subscribe.err" &
sub_pid=$!
# WatchdogTimestamp is when systemd last heard WATCHDOG=1: it must keep moving.
pings=()
while kill -0 "$sub_pid" 2>/dev/null; do
  pings+=("$(show WatchdogTimestampMonotonic)")
  sleep 5
done
wait "$sub_pid" || true  # ended by timeout (124): a subscription does not end by itself
elapsed=$(($(date +%s) - started))
descriptors=$(grep -c "\"camera_id\":\"$camera_id\"" "$share/subscribe.out" || true)
classes=$(grep -o '"class_name":"[a-z ]*"' "$share/subscribe.out" | sort | uniq -c | sort -rn | head -4 | awk '{print $2"x"$1}' | tr '\n' ' ' | sed 's/"class_name"://g; s/"//g')
if [ "$descriptors" -ge 10 ]; then
  pass "subscribe over mTLS + token" "$descriptors descriptors from $camera_id in ${STREAM_SECONDS}s ($classes)"
else
  fail "subscribe over mTLS + token" "$descriptors descriptors; stderr: $(tail -2 "$share/subscribe.err" | tr '\n' ' ' | cut -c1-150)"
fi
if grep -q 'authenticated client is streaming' "$tmp/camera.log" && [ "$descriptors" -ge 1 ]; then
  pass "RTSP camera with digest auth" "camera: '$(grep -m1 'authenticated client' "$tmp/camera.log")'; node frames: $(show StatusText)"
else
  fail "RTSP camera with digest auth" "camera log: $(tail -2 "$tmp/camera.log" | tr '\n' ' ')"
fi
distinct=$(printf '%s\n' "${pings[@]}" | sort -u | grep -vc '^0$' || true)
restarts=$(show NRestarts) active=$(show ActiveState) pid_now=$(show MainPID)
timeouts=$(inside journalctl -u retina-edge --no-pager | grep -c 'Watchdog timeout' || true)
evidence="${elapsed}s since start: ActiveState=$active NRestarts=$restarts MainPID $pid->$pid_now, $distinct distinct WatchdogTimestamps in ${#pings[@]} samples, 'Watchdog timeout' in journal: $timeouts; STATUS before: '$status_before'"
if [ "$elapsed" -ge 70 ] && [ "$active" = active ] && [ "$restarts" = 0 ] && [ "$pid_now" = "$pid" ] &&
  [ "$timeouts" = 0 ] && [ "$distinct" -ge 4 ]; then
  pass "watchdog: pinged, no restart 70s+" "$evidence"
else
  fail "watchdog: pinged, no restart 70s+" "$evidence"
fi

# --- A staged wedge: the process stopped, so no pings; systemd must kill and restart it ----------
if [ "$WEDGE" = 1 ]; then
  say "wedge: SIGSTOP to the node (pid $pid); the watchdog should fire within 30 s"
  inside kill -STOP "$pid"
  wedged=$(date +%s)
  restarted=
  for _ in $(seq 60); do
    sleep 2
    if [ "$(show NRestarts)" -ge 1 ] && [ "$(show ActiveState)" = active ] && [ "$(show MainPID)" != "$pid" ]; then
      restarted=$(date +%s)
      break
    fi
  done
  journal=$(inside journalctl -u retina-edge --no-pager -o cat | grep -E 'Watchdog timeout|SIGABRT|code=dumped|code=killed|Failed with result|restart counter' || true)
  if [ -n "$restarted" ] && grep -q 'Watchdog timeout' <<<"$journal"; then
    pass "watchdog: wedge killed, restarted" "NRestarts=$(show NRestarts), new MainPID $(show MainPID), active $((restarted - wedged))s after SIGSTOP; journal: $(tr '\n' '|' <<<"$journal" | cut -c1-260)"
    # The restarted node streams again.
    n=$(inside timeout 120 "${sub[@]}" --connect-timeout-seconds 60 --cert $pki/central.pem --key $pki/central.key \
      --token-file $pki/central.token --json --max-frames 5 2>"$share/subscribe-after.err" | grep -c "\"camera_id\":\"$camera_id\"" || true)
    [ "$n" -ge 5 ] && pass "after restart: streams again" "$n descriptors" || fail "after restart: streams again" "$n descriptors"
  else
    fail "watchdog: wedge killed, restarted" "NRestarts=$(show NRestarts) ActiveState=$(show ActiveState) MainPID $(show MainPID); journal: $(tr '\n' '|' <<<"$journal" | cut -c1-260)"
    inside kill -CONT "$pid" 2>/dev/null || true
  fi
fi

# --- Stop ---------------------------------------------------------------------------------------
inside timeout 60 systemctl stop retina-edge || true
result=$(show Result) code=$(show ExecMainCode) st=$(show ExecMainStatus)
last=$(inside journalctl -u retina-edge --no-pager -o cat -n 3 | tr '\n' '|')
# ExecMainCode 1 is CLD_EXITED: an exit, not a signal; "Deactivated successfully" is logged only
# for Result=success.
if [ "$result" = success ] && [ "$code" = 1 ] && [ "$st" = 0 ] && [ "$(show ActiveState)" = inactive ] &&
  grep -q 'Deactivated successfully' <<<"$last"; then
  pass "systemctl stop: status 0" "Result=$result ExecMainCode=$code ExecMainStatus=$st; $last"
else
  fail "systemctl stop: status 0" "Result=$result ExecMainCode=$code ExecMainStatus=$st; $last"
fi

if [ "$failures" -eq 0 ]; then say "all checks passed (USE_CREDENTIALS=$USE_CREDENTIALS, CAMERA_PASSWORD=$CAMERA_PASSWORD)"; else say "$failures check(s) FAILED"; fi
[ "$failures" -eq 0 ]
