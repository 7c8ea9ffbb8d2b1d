#!/usr/bin/env bash
# What does it cost to run each camera's GStreamer pipeline in its own child process (so a GStreamer
# abort kills one camera, not the node) instead of in the node process? Prints a Markdown report.
#   in-process : one process, N pipelines `<decode chain> ! appsink` (what src/ingest/pipeline.rs builds)
#   pipe       : N `gst-launch-1.0 ... ! fdsink fd=1` children; the parent reads fixed-size RGB frames
#   shm        : N `gst-launch-1.0 ... ! shmsink` children; the parent runs N `shmsrc ! appsink`
# The parent (the node's stand-in) is the same Python+GStreamer program in all three, so differences
# are the price of isolation. ~15 min on an idle box; each run first waits for the box to be idle
# and is redone if others load it. Knobs: REPS WARMUP WINDOW NS.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-3} WARMUP=${WARMUP:-5} WINDOW=${WINDOW:-20} NS=${NS:-1 8}
PY=/usr/bin/python3 # Debian's python3 has the GStreamer bindings (python3-gi); pyenv's has not

gst-inspect-1.0 shmsink >/dev/null || { echo "shmsink missing: install gstreamer1.0-plugins-bad" >&2; exit 1; }
if ! "$PY" -c 'import gi; gi.require_version("GstApp", "1.0")' 2>/dev/null; then
  sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends python3-gi gir1.2-gst-plugins-base-1.0 >/dev/null
fi

clip=$(bash "$repo/scripts/bench-clip.sh")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The node's chain (src/ingest/pipeline.rs): drop to 2 fps before scaling/converting, RGB <= 1280x720.
# videorate drop-only stands in for the node's rate gate (a probe dropping the same frames, same cost).
export WORK=$work DECODE="uridecodebin uri=file://$clip ! videorate drop-only=true ! videoscale ! videoconvert \
! video/x-raw,format=RGB,width=[16,1280],height=[16,720],pixel-aspect-ratio=1/1,framerate=[0/1,2/1]"

cat >"$work/node.py" <<'PY'
import os, sys, glob, time, struct, fcntl, threading, subprocess, statistics as st, gi
gi.require_version('Gst', '1.0'); gi.require_version('GstApp', '1.0')
from gi.repository import Gst, GstApp
Gst.init(None)
FRAME = 1280 * 720 * 3
RGB = 'video/x-raw,format=RGB,width=1280,height=720'
DECODE, WORK, ME = os.environ['DECODE'], os.environ['WORK'], os.path.abspath(__file__)
SHM = f'shm-size={4 * FRAME} wait-for-connection=true'  # room for 4 frames; block until the parent is there
PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size: a frame in 3 wake-ups instead of 43 with the default 64 KiB
HZ = os.sysconf('SC_CLK_TCK')
APPSRC = f'appsrc name=a caps={RGB},framerate=10/1'  # the latency test's frame source

def child(cmd):  # fork+exec, stdout is the hand-over pipe; stderr stays visible
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, bufsize=0)
def gst_child(sink):
    return child(['gst-launch-1.0', '-q'] + f'{DECODE} ! {sink}'.split())

def stop(p):  # SIGINT makes shmsink log a spurious poll error: kill, then unlink the shm area it leaves
    p.kill(); p.wait()
    for f in glob.glob('/dev/shm/shmpipe.*'):  # named 'shmpipe.%5d.%5d' % (pid, n)
        if int(f.split('.')[1]) == p.pid: os.unlink(f)
def read_frame(f, buf):  # a pipe carries bytes: the parent reassembles fixed-size frames
    view, got = memoryview(buf), 0
    while got < FRAME and (n := f.readinto(view[got:])): got += n
    return got == FRAME

def launch(desc):
    pl = Gst.parse_launch(desc)
    return pl, pl.get_by_name('s'), pl.set_state(Gst.State.PLAYING) != Gst.StateChangeReturn.FAILURE

def shm_source(sock):  # shmsrc carries no caps: the parent states them
    while True:  # the socket file exists a moment before shmsink listens (flag 00010000), and connect fails
        if any(l.split()[3:4] == ['00010000'] and l.split()[-1] == sock for l in open('/proc/net/unix')):
            pl, sink, ok = launch(f'shmsrc socket-path={sock} is-live=true ! {RGB} ! appsink name=s sync=false max-buffers=1')
            if ok: return pl, sink
            pl.set_state(Gst.State.NULL)
        time.sleep(0.02)

def box_busy():  # whole-machine busy ticks (/proc/stat), to see other people's load on a shared box
    f = [int(x) for x in open('/proc/stat').readline().split()[1:]]
    return sum(f) - f[3] - f[4]
def wait_idle(limit=0.15, timeout=900):  # other work (a cargo build...) would skew every figure
    for _ in range(int(timeout / 2)):
        b0 = box_busy(); time.sleep(2)
        if (box_busy() - b0) / HZ / 2 < limit: return
    print('box still busy, measuring anyway', file=sys.stderr)

def ticks(pids):  # utime+stime of all threads (fields 14-15 of /proc/PID/stat), in clock ticks
    return sum(sum(map(int, open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[11:13])) for p in pids)
def mem_kb(pid):  # (RSS, PSS): PSS splits shared pages (libraries, shm) between their users
    d = dict(l.split()[:2] for l in open(f'/proc/{pid}/smaps_rollup') if l.endswith('kB\n'))
    return int(d['Rss:']), int(d['Pss:'])

def run_once(mode, n, warmup, window):
    counts, procs, pipelines = [0] * n, [], []
    def count_samples(i, sink):  # the node maps the buffer in place; pulling the sample is the hand-over
        while sink.try_pull_sample(5 * Gst.SECOND): counts[i] += 1
    def count_frames(i, f):
        buf = bytearray(FRAME)
        while read_frame(f, buf): counts[i] += 1
    for i in range(n):
        if mode == 'in-process':
            pl, sink, _ = launch(f'{DECODE} ! appsink name=s sync=true max-buffers=1 drop=false')
            pipelines.append(pl); target, arg = count_samples, sink
        elif mode == 'pipe':
            p = gst_child('fdsink fd=1 sync=true'); procs.append(p)
            fcntl.fcntl(p.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            target, arg = count_frames, p.stdout
        else:
            sock = f'{WORK}/cam{os.getpid()}-{i}.sock'  # a dead child leaves its socket behind
            procs.append(gst_child(f'shmsink socket-path={sock} {SHM} sync=true'))
            pl, sink = shm_source(sock); pipelines.append(pl); target, arg = count_samples, sink
        threading.Thread(target=target, args=(i, arg), daemon=True).start()
    pids = [os.getpid()] + [p.pid for p in procs]
    time.sleep(warmup)
    c0, k0, b0, t0 = sum(counts), ticks(pids), box_busy(), time.monotonic()
    time.sleep(window)
    c1, k1, b1, t1 = sum(counts), ticks(pids), box_busy(), time.monotonic()
    mem = [mem_kb(p) for p in pids]
    for pl in pipelines: pl.set_state(Gst.State.NULL)
    for p in procs: stop(p)
    dt = t1 - t0
    return [mode, n, (k1 - k0) / HZ / dt, sum(m[1] for m in mem) / 1024, sum(m[0] for m in mem) / 1024,
            mem[0][1] / 1024, (c1 - c0) / dt, (b1 - b0 - (k1 - k0)) / HZ / dt]

def run(mode, n, warmup, window, tries=6):  # redo a window disturbed by others' load, or a failed start
    n, warmup, window = int(n), float(warmup), float(window)
    for _ in range(tries):
        wait_idle(); r = run_once(mode, n, warmup, window)
        if r[-1] < 0.15 and r[-2] > 1.9 * n: break
    print('\t'.join(f'{x:.3f}' if isinstance(x, float) else str(x) for x in r))

def push_frames(pl, n):  # one frame every 100 ms, time.monotonic_ns() in its first 8 bytes
    src = pl.get_by_name('a')
    frame = bytes(range(256)) * (FRAME // 256)  # touched pages, like a decoded picture
    for _ in range(n):
        time.sleep(0.1)
        buf = Gst.Buffer.new_wrapped(frame)  # the copy into a new buffer happens before the stamp
        buf.fill(0, struct.pack('<q', time.monotonic_ns()))
        src.emit('push-buffer', buf)
    src.emit('end-of-stream')

def writer(sink, n):  # the latency test's child process
    pl = launch(f'{APPSRC} ! {sink}')[0]; push_frames(pl, int(n))
    pl.get_bus().timed_pop_filtered(5 * Gst.SECOND, Gst.MessageType.EOS); pl.set_state(Gst.State.NULL)

def sink_latencies(sink, n):
    lat = []
    while len(lat) < n and (s := sink.try_pull_sample(10 * Gst.SECOND)):
        lat.append(time.monotonic_ns() - struct.unpack('<q', s.get_buffer().extract_dup(0, 8))[0])
    return lat

def latency(n=45, skip=5):  # one-way hand-over of one 2.76 MB frame, one frame in flight at a time
    wait_idle(); out = {}
    pl, sink, _ = launch(f'{APPSRC} ! appsink name=s sync=false max-buffers=1')  # baseline: a thread, same process
    th = threading.Thread(target=push_frames, args=(pl, n)); th.start()
    out['in-process'] = sink_latencies(sink, n); th.join(); pl.set_state(Gst.State.NULL)
    for size in (64 << 10, PIPE_SIZE):
        p = child([sys.executable, ME, 'writer', 'fdsink fd=1 sync=false', str(n)])
        fcntl.fcntl(p.stdout.fileno(), fcntl.F_SETPIPE_SZ, size)
        buf, lat = bytearray(FRAME), []
        while read_frame(p.stdout, buf): lat.append(time.monotonic_ns() - struct.unpack_from('<q', buf)[0])
        out[f'pipe, {size >> 10} KiB buffer'] = lat; p.wait()
    sock = f'{WORK}/latency.sock'
    p = child([sys.executable, ME, 'writer', f'shmsink socket-path={sock} {SHM} sync=false', str(n)])
    pl, sink = shm_source(sock)
    out['shm'] = sink_latencies(sink, n); pl.set_state(Gst.State.NULL); p.wait()
    for k, v in out.items(): print(f'latency\t{k}\t{st.median(v[skip:]) / 1e6:.3f}')

def startup(k=5):  # new camera -> first RGB frame: a pipeline in this warm process vs fork+exec of a child
    wait_idle(); inproc, spawn = [], []
    for i in range(k + 1):  # round 0 loads plugins and fills caches: discarded
        t0 = time.monotonic(); pl, sink, _ = launch(f'{DECODE} ! appsink name=s sync=true max-buffers=1')
        sink.try_pull_sample(10 * Gst.SECOND); inproc.append(time.monotonic() - t0); pl.set_state(Gst.State.NULL)
        t0 = time.monotonic(); p = gst_child('fdsink fd=1 sync=true'); read_frame(p.stdout, bytearray(FRAME))
        spawn.append(time.monotonic() - t0); p.kill(); p.wait()
    print(f'startup\tin-process pipeline\t{st.median(inproc[1:]) * 1e3:.0f}')
    print(f'startup\tchild process (fork+exec gst-launch)\t{st.median(spawn[1:]) * 1e3:.0f}')

def report(path):  # medians over repetitions, (min–max)
    rows = [l.rstrip('\n').split('\t') for l in open(path)]
    def agg(vals, fmt): v = sorted(vals); return f'{fmt % st.median(v)} ({fmt % v[0]}–{fmt % v[-1]})'
    runs, med = {}, {}
    for r in rows:
        if r[0] in ('in-process', 'pipe', 'shm'): runs.setdefault((r[0], int(r[1])), []).append([float(x) for x in r[2:]])
    print('| mode | N | CPU, cores | PSS total, MB | RSS total, MB | parent PSS, MB | frames/s | others\' load, cores |\n|---|---:|---:|---:|---:|---:|---:|---:|')
    for (mode, n), rs in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0] != 'in-process', kv[0][0])):
        cols = list(zip(*rs)); med[mode, n] = [st.median(c) for c in cols]
        print(f'| {mode} | {n} | ' + ' | '.join(agg(c, f) for c, f in zip(cols, ['%.3f', '%.0f', '%.0f', '%.0f', '%.1f', '%.2f'])) + ' |')
    print('\n| isolation cost per camera: (isolated - in-process) / N, medians | N | CPU, % of one core | PSS, MB (% of in-process) | RSS, MB |\n|---|---:|---:|---:|---:|')
    for (mode, n), m in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if mode != 'in-process' and ('in-process', n) in med:
            b = med['in-process', n]
            print(f'| {mode} | {n} | {(m[0] - b[0]) / n * 100:+.1f} | {(m[1] - b[1]) / n:+.1f} ({(m[1] / b[1] - 1) * 100:+.0f} %) | {(m[2] - b[2]) / n:+.1f} |')
    for kind, title, fmt in (('latency', 'hand-over of one 1280x720 RGB frame (2.76 MB), one-way', '%.2f'),
                             ('startup', 'new camera to first RGB frame', '%.0f')):
        print(f'\n| {title} | ms, median (min–max) over runs |\n|---|---:|')
        for k in dict.fromkeys(r[1] for r in rows if r[0] == kind):
            print(f'| {k} | {agg([float(r[2]) for r in rows if r[0] == kind and r[1] == k], fmt)} |')

if __name__ == '__main__':
    {'run': run, 'writer': writer, 'latency': latency, 'startup': startup, 'report': report}[sys.argv[1]](*sys.argv[2:])
PY

for rep in $(seq "$REPS"); do
  for n in $NS; do
    for mode in in-process pipe shm; do "$PY" "$work/node.py" run "$mode" "$n" "$WARMUP" "$WINDOW" >>"$work/results.tsv"; done
  done
  "$PY" "$work/node.py" latency >>"$work/results.tsv"
  "$PY" "$work/node.py" startup >>"$work/results.tsv"
  echo "repetition $rep/$REPS done" >&2
done
echo "GStreamer $(gst-launch-1.0 --version | sed -n 2p | cut -d' ' -f2), $(nproc) cores, REPS=$REPS WINDOW=${WINDOW}s, $(date -u +%F)"
echo
"$PY" "$work/node.py" report "$work/results.tsv"
