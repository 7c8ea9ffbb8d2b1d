#!/usr/bin/env python3
"""A central system that uses a retina-edge node, in Python: nothing but the proto is shared.

    retina_client.py [subscribe] [--addr 127.0.0.1:50051] [--camera ID] [--class NAME]
                     [--min-score S] [--include-empty] [--full-context]
                     [--from-earliest | --after-offset N | --from-time RFC3339] [--resume-file PATH]
                     [--name NAME] [--frames] [--save out.npz] [--max-frames N] [--timeout S]
    retina_client.py info [--addr ...]
    retina_client.py jetstream [--nats nats://127.0.0.1:4222] [--stream RETINA] [--subject retina.>]
                     [--durable NAME] [--from-earliest | --from-time RFC3339] [--until-caught-up]
                     [--frames] [--save out.npz] [--max-frames N]

`subscribe` prints one line per track event (confirmed, better_view, appearance_changed, ended),
or one block per frame with --frames, and one line per gap notice (offsets the node's log will
not deliver: evicted by retention or never stored), then a summary. It starts live, or with the
oldest descriptor the node's log keeps (--from-earliest: also those of the node's earlier runs),
after an offset (--after-offset: the last one received), or with the first descriptor captured at
or after a time (--from-time, e.g. 2026-12-02T08:00:00Z; a time without a zone is UTC). --save
writes every decoded vector with its metadata, and the offset of every descriptor, to a .npz file
(see `save`). `info` prints GetNodeInfo.

`jetstream` reads the same records from where central collectors (`retina-edge collect`) stored
them: a NATS JetStream stream, one subject per node and camera. It decodes and prints them the
same way, naming cameras node/camera, with each node's class names from its `._node` message.
--durable NAME keeps the reader's place on the server: run again, it resumes after the last record
it acknowledged (each is acknowledged once decoded); readers sharing NAME share the records.

--resume-file PATH makes a durable subscriber. The last offset received (or passed by a gap
notice) is kept in PATH as JSON {"node_id": ..., "offset": N}, replaced atomically (written
beside, synced, renamed) within 200 ms of each descriptor and at every stop. When PATH exists the
client starts after its offset (the start options only say where the first run starts), and
refuses a file of another node. A stream that breaks (the node restarts or crashes: UNAVAILABLE;
or a stopping node ends it) is resubscribed after the last offset, with backoff (0.25 s doubling
to 2 s), until --timeout, --max-frames, Ctrl-C or SIGTERM; stderr says so. Within one run of the
client every descriptor the node's log keeps arrives once; across runs at least once (the file
may lag the last 200 ms). Without --resume-file the client ends when the stream ends.

Ctrl-C stops with status 130, SIGTERM with 0, after the summary and --save either way.

Run it with the venv of `make deps`: .deps/python/bin/python scripts/central/retina_client.py
"""

import argparse
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import retina_decode as rd  # noqa: E402
import retina_proto  # noqa: E402

pb, pb_grpc = retina_proto.load()


def parse_args(argv):
    # `subscribe` is the default command.
    if not argv or argv[0] not in ("subscribe", "info", "jetstream", "-h", "--help"):
        argv = ["subscribe", *argv]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--addr", default="127.0.0.1:50051", help="node's gRPC address (host:port)")
        p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                       help="wait this long for the node to accept a connection (default 10)")
        p.add_argument("--ca-cert", type=Path, metavar="PEM",
                       help="CA certificate the node's certificate must chain to: TLS")
        p.add_argument("--cert", type=Path, metavar="PEM", help="this client's certificate (mutual TLS)")
        p.add_argument("--key", type=Path, metavar="PEM", help="the key of --cert")
        p.add_argument("--server-name", metavar="NAME",
                       help="the name the node's certificate is checked against, when --addr is an IP address")
        p.add_argument("--token-file", type=Path, metavar="PATH",
                       help="file holding the node's token (or set RETINA_TOKEN); never on the command line")

    common(commands.add_parser("info", help="print the node's GetNodeInfo"))
    s = commands.add_parser("subscribe", help="stream descriptors (default)")
    common(s)
    s.add_argument("--camera", action="append", default=[], metavar="ID", help="only this camera (repeatable)")
    s.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                   help="only this class, e.g. car (repeatable)")
    s.add_argument("--min-score", type=float, default=0.0, metavar="S", help="only objects scoring at least S")
    start = s.add_mutually_exclusive_group()
    start.add_argument("--from-earliest", action="store_true",
                       help="start with the oldest descriptor the node's log keeps (also of its earlier runs)")
    start.add_argument("--after-offset", type=offset_arg, metavar="N",
                       help="start after offset N (the last one received), missing nothing the log kept")
    start.add_argument("--from-time", type=rfc3339, metavar="RFC3339",
                       help="start with the first descriptor captured at or after this time, e.g. "
                            "2026-12-02T08:00:00Z (no zone: UTC)")
    s.add_argument("--resume-file", type=Path, metavar="PATH",
                   help="a durable subscriber: keep the last offset received in PATH, start after it "
                        "when PATH exists, and when the stream breaks (the node restarts) resubscribe "
                        "after it, with backoff, until --timeout, --max-frames, Ctrl-C or SIGTERM")
    s.add_argument("--include-empty", action="store_true", help="also frames without objects")
    s.add_argument("--full-context", action="store_true", help="context fields in every descriptor")
    s.add_argument("--name", default="retina-client-py", help="subscriber name for the node's metrics")
    s.add_argument("--frames", action="store_true", help="print every frame, not only track events")
    s.add_argument("--save", type=Path, metavar="OUT.npz", help="save every decoded vector with metadata")
    s.add_argument("--max-frames", type=int, metavar="N", help="stop after N descriptors")
    s.add_argument("--timeout", type=float, metavar="S",
                   help="stop after S seconds (otherwise: when the node ends the stream, or never "
                        "with --resume-file)")

    j = commands.add_parser("jetstream", help="read what collectors stored in NATS JetStream")
    j.add_argument("--nats", default="nats://127.0.0.1:4222", metavar="URL", help="the NATS server")
    j.add_argument("--stream", default="RETINA", help="the collectors' stream (default RETINA)")
    j.add_argument("--subject", default="retina.>",
                   help="which records: retina.> all (default), retina.NODE.> one node, retina.*.CAMERA "
                        "one camera id on every node")
    j.add_argument("--durable", metavar="NAME",
                   help="keep this reader's place on the server under NAME: it resumes where it stopped, "
                        "and readers sharing NAME share the records")
    jstart = j.add_mutually_exclusive_group()
    jstart.add_argument("--from-earliest", action="store_true", help="start with the oldest record kept")
    jstart.add_argument("--from-time", type=rfc3339, metavar="RFC3339",
                        help="start with the first record stored at or after this time")
    j.add_argument("--until-caught-up", action="store_true",
                   help="stop once every record there was has been read, instead of waiting for more")
    j.add_argument("--frames", action="store_true", help="print every frame, not only track events")
    j.add_argument("--save", type=Path, metavar="OUT.npz", help="save every decoded vector with metadata")
    j.add_argument("--max-frames", type=int, metavar="N", help="stop after N descriptors")
    # What the collectors stored is whatever the nodes pushed.
    j.set_defaults(include_empty=True)
    return parser.parse_args(argv)


def offset_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not an offset: {text!r}")
    return value


RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)?")


def rfc3339(text: str) -> tuple:
    """(Unix seconds, nanoseconds) of an RFC 3339 time; no zone means UTC, as in
    `retina-edge subscribe --from-time`. Nanoseconds are kept exactly."""
    m = RFC3339.fullmatch(text.strip())
    try:
        if not m:
            raise ValueError
        zone = m.group(3) or "Z"
        t = datetime.fromisoformat(m.group(1).replace(" ", "T") + ("+00:00" if zone in "Zz" else zone))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time (e.g. 2026-12-02T08:00:00Z): {text!r}")
    return int(t.timestamp()), int((m.group(2) or "0").ljust(9, "0"))


def credentials(args):
    """TLS and the bearer token, as `retina-edge subscribe` sends them; None for a plain channel."""
    token = None
    if args.token_file:
        token = args.token_file.read_text().strip()
    elif os.environ.get("RETINA_TOKEN"):
        token = os.environ["RETINA_TOKEN"].strip()
    if args.ca_cert or args.cert:
        if bool(args.cert) != bool(args.key):
            sys.exit("error: --cert and --key go together")
        channel = grpc.ssl_channel_credentials(
            root_certificates=args.ca_cert.read_bytes() if args.ca_cert else None,
            private_key=args.key.read_bytes() if args.key else None,
            certificate_chain=args.cert.read_bytes() if args.cert else None,
        )
    elif token:
        # A token without TLS: grpc sends call credentials only on a local (loopback) channel.
        channel = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    else:
        return None
    if token:
        channel = grpc.composite_channel_credentials(channel, grpc.access_token_call_credentials(token))
    return channel


def open_channel(args, options):
    creds = credentials(args)
    if creds is None:
        return grpc.insecure_channel(args.addr, options=options)
    if args.server_name:
        options = [*options, ("grpc.ssl_target_name_override", args.server_name)]
    return grpc.secure_channel(args.addr, creds, options=options)


def connect(args):
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        # Retry a refused connection quickly: scripts start this client beside a starting node.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    channel = open_channel(args, options)
    try:
        grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
    except grpc.FutureTimeoutError:
        sys.exit(f"error: no node answers at {args.addr} within {args.connect_timeout} s")
    return channel, pb_grpc.RetinaStub(channel)


# ── formatting ─────────────────────────────────────────────────────────────────────────────

def when(ns: int) -> str:
    t = datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000 // 1_000_000:03d}Z"


def box_text(b) -> str:
    x0, y0, x1, y1 = b
    return f"box x {x0:.3f}-{x1:.3f} y {y0:.3f}-{y1:.3f}"


def embedding_text(e) -> str:
    return f"{rd.codec_name(e.codec)} x{e.dimension} ({len(e.data)} B)"


class Subscriber:
    """Decodes a stream of FrameDescriptors: prints, counts and keeps the decoded vectors."""

    def __init__(self, args, class_names, name_nodes=False):
        self.args = args
        self.class_names = class_names
        # Records of many nodes (read from JetStream): cameras are known as node/camera.
        self.name_nodes = name_nodes
        self.contexts = {}  # camera_id -> rd.Context in force
        self.sequences = {}  # camera_id -> (first, last, missing)
        self.runs = {}  # camera_id -> node_run_id of its last descriptor
        self.skipped = Counter()  # camera_id -> sequences skipped by node restarts (see on_descriptor)
        self.position = None  # the last offset received or passed by a gap notice: resume after it
        self.gaps = []  # gap notices (LogGap)
        self.resubscribed = 0
        self.frames = 0
        self.bytes = 0
        self.events = Counter()
        self.codecs = Counter()  # (codec name, dimension) -> vectors decoded
        self.unknown_codecs = Counter()
        self.malformed = 0
        self.rows = []  # one dict per decoded vector, see save()
        self.frame_rows = []  # (camera_id, sequence, capture time ns, offset, node_run_id) of every descriptor

    def class_name(self, class_id: int) -> str:
        if class_id < len(self.class_names):
            return self.class_names[class_id]
        return f"class-{class_id}"

    def vector(self, e):
        """The decoded vector, or None (after a warning) if it cannot be decoded."""
        try:
            v = rd.decode_embedding(e)
        except rd.UnknownCodec as err:
            if not self.unknown_codecs[err.codec]:
                print(f"warning: skipping vectors of unknown codec {err.codec}", file=sys.stderr)
            self.unknown_codecs[err.codec] += 1
            return None
        except ValueError as err:
            print(f"error: malformed embedding: {err}", file=sys.stderr)
            self.malformed += 1
            return None
        self.codecs[(rd.codec_name(e.codec), e.dimension)] += 1
        return v

    def on_message(self, d):
        """One message of the stream: a gap notice or a descriptor."""
        if d.HasField("gap"):
            self.on_gap(d.gap)
        else:
            self.on_descriptor(d)

    def on_gap(self, gap):
        print(rd.gap_text(gap))
        self.gaps.append(gap)
        # Those offsets will never arrive: resuming after them does not ask for them again.
        self.position = max(self.position or 0, gap.last_offset)

    def on_descriptor(self, d):
        self.frames += 1
        self.bytes += d.ByteSize()
        self.position = max(self.position or 0, d.offset)
        cam = d.camera_id
        key = f"{d.node_id}/{cam}" if self.name_nodes else cam
        ctx = rd.merge_context(self.contexts.get(key), d)
        self.contexts[key] = ctx
        first, last, missing = self.sequences.get(key, (d.sequence, d.sequence - 1, 0))
        if d.sequence > last + 1:
            if self.runs.get(key, ctx.node_run_id) != ctx.node_run_id:
                # A new run of the node continues the camera's sequences, skipping ahead after a
                # crash (numbers handed out but perhaps not stored are not handed out again).
                self.skipped[key] += d.sequence - last - 1
            else:
                missing += d.sequence - last - 1
        self.runs[key] = ctx.node_run_id
        self.sequences[key] = (first, d.sequence, missing)
        capture_ns = rd.timestamp_ns(d.capture_time)
        self.frame_rows.append((cam, d.sequence, capture_ns, d.offset, ctx.node_run_id))
        where = f"{when(capture_ns)} {key} #{d.sequence}"
        base = dict(camera_id=cam, node_id=ctx.node_id, node_run_id=ctx.node_run_id, sequence=d.sequence,
                    offset=d.offset, capture_time_ns=capture_ns, frame_width=ctx.frame_width,
                    frame_height=ctx.frame_height, embedder="{}@{}".format(*ctx.embedder) if ctx.embedder else "")

        if self.args.frames:
            print(f"{where}  {ctx.frame_width}x{ctx.frame_height}  {len(d.tracks)} tracks, "
                  f"{len(d.track_events)} events, {len(d.objects)} objects")
            for t in d.tracks:
                print(f"    track {rd.track_number(t.track_id):<5} {self.class_name(t.class_id):<12} "
                      f"{rd.decode_score_q8(t.score_q8):.2f}  {box_text(rd.decode_box_q16(t.box_q16))}")

        for i, o in enumerate(d.objects):
            box = (o.box.x_min, o.box.y_min, o.box.x_max, o.box.y_max)
            if self.args.frames:
                track = f"  track {rd.track_number(o.track_id)}" if o.track_id else ""
                emb = f"  {embedding_text(o.embedding)}" if o.HasField("embedding") else ""
                print(f"    object {o.class_name:<12} {o.score:.2f}  {box_text(box)}{track}{emb}")
            if o.HasField("embedding"):
                self.keep(base, "objects", i, "detection", o.track_id, o.class_id, o.score, box,
                          capture_ns, o.embedding)

        for j, ev in enumerate(d.track_events):
            kind = rd.EVENT_KINDS.get(ev.kind, f"kind-{ev.kind}")
            self.events[kind] += 1
            line = f"{where}  track {rd.track_number(ev.track_id):<5} {self.class_name(ev.class_id):<12} {kind}"
            view = ev.view if ev.HasField("view") else None
            if view is not None:
                box = rd.decode_box_q16(view.box_q16)
                score = rd.decode_score_q8(view.score_q8)
                view_ns = rd.timestamp_ns(view.capture_time)
            if ev.kind == rd.ENDED and ev.HasField("summary"):
                s = ev.summary
                seconds = (rd.timestamp_ns(s.last_seen) - rd.timestamp_ns(s.first_seen)) / 1e9
                reason = rd.END_REASONS.get(s.end_reason, "unknown reason")
                line += (f" ({reason}): {seconds:.2f} s, {s.frames_seen} frames, "
                         f"trajectory {len(rd.decode_trajectory(s))} points")
                if view is not None:
                    line += f"; best view {when(view_ns)[11:]} score {score:.2f}"
            elif view is not None:
                line += f": score {score:.2f} {box_text(box)}"
            if view is not None and view.HasField("appearance"):
                line += f", appearance {embedding_text(view.appearance)}"
                self.keep(base, "track_events", j, rd.EVENT_KINDS.get(ev.kind, f"kind-{ev.kind}"), ev.track_id,
                          ev.class_id, score, box, view_ns, view.appearance)
            print(("    " if self.args.frames else "") + line)

        indent = "    " if self.args.frames else ""
        for ev in d.zone_events:
            self.events[rd.ZONE_EVENT_KINDS.get(ev.kind, f"kind-{ev.kind}")] += 1
            print(f"{indent}{when(rd.timestamp_ns(ev.time))} {key}  track {rd.track_number(ev.track_id):<5} "
                  f"{self.class_name(ev.class_id):<12} "
                  f"{rd.zone_event_text(ev.kind, ev.zone_id, ev.direction, ev.dwell_seconds)}")
        if d.HasField("counts"):
            r = d.counts
            print(f"{indent}{key} counts {when(rd.timestamp_ns(r.from_time))} to {when(rd.timestamp_ns(r.to_time))}: "
                  f"{rd.counts_text(r)}")

    def keep(self, base, source, index, kind, track_id, class_id, score, box, view_ns, e):
        v = self.vector(e)
        if v is None:
            return
        self.rows.append(dict(base, source=source, index=index, kind=kind, track_id=track_id,
                              class_id=class_id, score=score, box=box, view_time_ns=view_ns,
                              codec=rd.codec_name(e.codec), projection_id=e.projection_id, vector=v))

    def summary(self) -> str:
        lines = ["── summary " + "─" * 40, f"frames               {self.frames}"]
        for cam, (first, last, missing) in sorted(self.sequences.items()):
            note = "" if self.args.include_empty else " (frames without objects are not sent)"
            if self.skipped[cam]:
                note += f", {self.skipped[cam]} skipped by node restarts"
            lines.append(f"  camera {cam:<12} sequences {first}..={last}, {missing} missing{note}")
        if self.position is not None and not self.name_nodes:
            lines.append(f"last offset          {self.position} (resume with --after-offset {self.position})")
        lines.append(f"gap notices          {len(self.gaps)}")
        lines.extend(f"  {rd.gap_text(g)}" for g in self.gaps[:10])
        if len(self.gaps) > 10:
            lines.append(f"  ... and {len(self.gaps) - 10} more")
        if self.resubscribed:
            lines.append(f"resubscribed         {self.resubscribed} times after a broken stream")
        events = ", ".join(f"{n} {k}" for k, n in self.events.items()) or "none"
        lines.append(f"track events         {events}")
        codecs = ", ".join(f"{n} {c} x{d}" for (c, d), n in sorted(self.codecs.items())) or "none"
        lines.append(f"vectors decoded      {len(self.rows)}: {codecs}")
        if self.unknown_codecs:
            skipped = ", ".join(f"{n} of codec {c}" for c, n in sorted(self.unknown_codecs.items()))
            lines.append(f"vectors skipped      {skipped}")
        if self.malformed:
            lines.append(f"malformed vectors    {self.malformed}")
        per_frame = self.bytes // self.frames if self.frames else 0
        lines.append(f"descriptor bytes     {self.bytes} ({per_frame} per frame, protobuf)")
        return "\n".join(lines)

    def save(self, path: Path) -> None:
        """Every decoded vector, one row each: `vectors[i, :dimension[i]]` (zero-padded to the
        largest dimension, which is every dimension unless codecs were mixed) with its metadata:
        where it came from (`source` "objects" or "track_events", `index` in that list, `kind`
        "detection" or the event kind), the frame (camera, sequence, offset in the node's log,
        capture time, context) and the object (track, class, score, box, capture time of the view).
        The `frame_*` arrays list every descriptor received, in order, with or without vectors
        (`frame_offset`: their offsets; `frame_node_run_id`: the run of the node that made them)."""
        rows = self.rows
        width = max((len(r["vector"]) for r in rows), default=0)
        vectors = np.zeros((len(rows), width), np.float32)
        for i, r in enumerate(rows):
            vectors[i, : len(r["vector"])] = r["vector"]

        def column(name, dtype):
            return np.array([r[name] for r in rows], dtype=dtype)

        def text(name):
            return np.array([r[name] for r in rows], dtype=str) if rows else np.zeros(0, "<U1")

        np.savez(
            path,
            vectors=vectors,
            dimension=np.array([len(r["vector"]) for r in rows], np.int32),
            camera_id=text("camera_id"),
            node_id=text("node_id"),
            node_run_id=column("node_run_id", np.uint64),
            sequence=column("sequence", np.uint64),
            offset=column("offset", np.uint64),
            capture_time_ns=column("capture_time_ns", np.int64),
            view_time_ns=column("view_time_ns", np.int64),
            frame_size=np.array([(r["frame_width"], r["frame_height"]) for r in rows], np.int32).reshape(-1, 2),
            source=text("source"),
            index=column("index", np.int32),
            kind=text("kind"),
            track_id=column("track_id", np.uint64),
            class_id=column("class_id", np.int32),
            score=column("score", np.float32),
            box=np.array([r["box"] for r in rows], np.float32).reshape(-1, 4),
            codec=text("codec"),
            projection_id=text("projection_id"),
            embedder=text("embedder"),
            frame_camera_id=np.array([f[0] for f in self.frame_rows], dtype=str),
            frame_sequence=np.array([f[1] for f in self.frame_rows], np.uint64),
            frame_capture_time_ns=np.array([f[2] for f in self.frame_rows], np.int64),
            frame_offset=np.array([f[3] for f in self.frame_rows], np.uint64),
            frame_node_run_id=np.array([f[4] for f in self.frame_rows], np.uint64),
        )


class ResumeFile:
    """The last offset received, kept in a file as {"node_id": ..., "offset": N}: replaced
    atomically (written beside, synced, renamed) by a thread within `interval` seconds of a new
    offset, and at once by flush(). A failed write is raised by the next set() or flush()."""

    def __init__(self, path: Path, interval: float = 0.2):
        self.path = path
        self.interval = interval
        self.lock = threading.Lock()  # guards the state below
        self.write_lock = threading.Lock()  # one write at a time
        self.node_id, self.offset, self.written, self.error = "", None, None, None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="resume-file", daemon=True)
        self.thread.start()

    def load(self):
        """(node_id, offset) from the file, or None if there is no file."""
        try:
            saved = json.loads(self.path.read_text())
            node_id, offset = saved["node_id"], saved["offset"]
            if not isinstance(node_id, str) or not isinstance(offset, int) or offset < 0:
                raise ValueError("node_id must be a string and offset a whole number")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            sys.exit(f"error: resume file {self.path} is not one this client wrote ({err}); remove it to start anew")
        with self.lock:
            self.node_id, self.offset = node_id, offset
            self.written = (node_id, offset)
        return node_id, offset

    def set(self, node_id: str, offset: int) -> None:
        with self.lock:
            if self.error:
                raise self.error
            self.node_id, self.offset = node_id, offset

    def flush(self) -> None:
        with self.write_lock:
            with self.lock:
                state = (self.node_id, self.offset)
                if self.error:
                    raise self.error
            if state[1] is None or state == self.written:
                return
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            try:
                with open(tmp, "w") as f:
                    json.dump({"node_id": state[0], "offset": state[1]}, f)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except OSError as err:
                with self.lock:
                    self.error = OSError(f"cannot write the resume file {self.path}: {err}")
                raise self.error
            self.written = state

    def _run(self):
        while not self.stopped.wait(self.interval):
            try:
                self.flush()
            except OSError:
                return  # raised in the main thread by its next set() or flush()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.flush()


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop like Ctrl-C, but as asked for (exit status 0)."""


def on_sigterm(signum, frame):
    raise Terminated()


# Broken streams worth resubscribing after (with --resume-file): the node is restarting or gone
# (UNAVAILABLE; CANCELLED or DEADLINE_EXCEEDED that are not our own), has too many subscribers or
# cut off a slow one (RESOURCE_EXHAUSTED), or failed. Not: a request the node refuses
# (INVALID_ARGUMENT; OUT_OF_RANGE, an offset its log has not reached: another log).
RETRY_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL,
               grpc.StatusCode.UNKNOWN}
BACKOFF_INITIAL, BACKOFF_MAX = 0.25, 2.0


def subscribe_request(args, after):
    """The SubscribeRequest: after offset `after` when resuming, else where the options say."""
    request = pb.SubscribeRequest(
        camera_ids=args.camera,
        class_names=args.classes,
        min_score=args.min_score,
        include_empty_frames=args.include_empty,
        start=pb.START_POSITION_LIVE,
        subscriber_name=args.name,
        full_context=args.full_context,
    )
    if after is not None:
        request.start, request.after_offset = pb.START_POSITION_AFTER_OFFSET, after
    elif args.from_earliest:
        request.start = pb.START_POSITION_EARLIEST
    elif args.from_time is not None:
        request.start = pb.START_POSITION_FROM_TIME
        request.from_time.seconds, request.from_time.nanos = args.from_time
    return request


def subscribe(args) -> int:
    signal.signal(signal.SIGTERM, on_sigterm)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    channel, stub = connect(args)
    sub = Subscriber(args, [])
    sub.position = args.after_offset
    resume = ResumeFile(args.resume_file) if args.resume_file else None
    node_id = None  # the node whose log the offsets are of
    if resume and (saved := resume.load()) is not None:
        node_id, sub.position = saved
        print(f"resume file {args.resume_file}: starting after offset {sub.position}", file=sys.stderr)
    status, backoff, attempts = 0, BACKOFF_INITIAL, 0
    call = None
    try:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            call = None
            try:
                info = stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=min(args.connect_timeout, remaining or 1e9))
                if node_id is not None and info.node_id != node_id:
                    where = f"resume file {args.resume_file}" if attempts == 0 else "the stream so far"
                    print(f"error: {where} has offsets of node {node_id!r}'s log, this is node {info.node_id!r}"
                          + ("; remove the file to start anew" if attempts == 0 else ""), file=sys.stderr)
                    status = 1
                    break
                node_id = info.node_id
                # A restarted node may run another detector.
                sub.class_names = next((list(m.class_names) for m in info.models if m.role == "detector"), [])
                call = stub.Subscribe(subscribe_request(args, sub.position), timeout=remaining)
                for d in call:
                    sub.on_message(d)
                    if resume:
                        resume.set(node_id, sub.position)
                    if attempts:
                        sub.resubscribed += 1
                        print(f"resumed: first offset {d.offset or d.gap.first_offset}", file=sys.stderr)
                        attempts, backoff = 0, BACKOFF_INITIAL
                    if args.max_frames is not None and sub.frames >= args.max_frames:
                        call.cancel()
                        break
                else:
                    broken = "the node ended it"  # it is stopping
                if args.max_frames is not None and sub.frames >= args.max_frames:
                    break
            except grpc.RpcError as err:
                code = err.code()
                # Our own --timeout ends the stream too (and, without --resume-file, so do any
                # CANCELLED and DEADLINE_EXCEEDED, as always); anything else is a failure, worth
                # resubscribing after only for a durable subscriber, when the node may be back.
                timed_out = deadline is not None and time.monotonic() >= deadline
                if (code == grpc.StatusCode.DEADLINE_EXCEEDED and timed_out) or (
                        not resume and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)):
                    break
                if not resume or code not in RETRY_CODES:
                    what = "Subscribe" if call is not None else "GetNodeInfo"
                    print(f"error: {what} failed: {code.name}: {err.details()}", file=sys.stderr)
                    status = 1
                    break
                broken = f"{code.name}: {err.details()}"
            if not resume:
                break
            resume.flush()
            attempts += 1
            wait = backoff * random.uniform(0.8, 1.2)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            # Every failure of a long outage would be too many lines: the 1st, 2nd, 4th, 8th, ...
            if attempts & (attempts - 1) == 0:
                after = "from the start position" if sub.position is None else f"after offset {sub.position}"
                print(f"stream broken ({broken}); resubscribing {after} in {wait:.2f} s (attempt {attempts})",
                      file=sys.stderr)
            time.sleep(wait)
            backoff = min(backoff * 2, BACKOFF_MAX)
    except KeyboardInterrupt as stop:
        if call is not None:
            call.cancel()
        status = 0 if isinstance(stop, Terminated) else 130
    except OSError as err:  # the resume file cannot be written
        print(f"error: {err}", file=sys.stderr)
        status = 1
    finally:
        channel.close()
    if resume:
        try:
            resume.close()
        except OSError as err:
            if status != 1:
                print(f"error: {err}", file=sys.stderr)
            status = status or 1
    if sub.frames or status == 0:
        print(sub.summary())
    if args.save:
        sub.save(args.save)
        print(f"saved {len(sub.rows)} vectors to {args.save}")
    if sub.malformed and status == 0:
        status = 1
    return status


def info(args) -> int:
    channel, stub = connect(args)
    print(stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=args.connect_timeout))
    channel.close()
    return 0


# ── reading at the centre: JetStream ───────────────────────────────────────────────────────

JS_BATCH = 256  # records asked for at once, each acknowledged once decoded


def node_info_subject(subject: str) -> str:
    """`<prefix>.<node>._node` for a record's subject `<prefix>.<node>.<camera>`."""
    return subject.rsplit(".", 1)[0] + "._node"


async def read_jetstream(args) -> int:
    # Imported here: the node's own stream needs neither.
    import asyncio

    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    deliver = DeliverPolicy.NEW
    start_time = None
    if args.from_earliest:
        deliver = DeliverPolicy.ALL
    elif args.from_time is not None:
        seconds, nanos = args.from_time
        deliver = DeliverPolicy.BY_START_TIME
        start_time = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"
    try:
        nc = await nats.connect(args.nats, name="retina-client-py", connect_timeout=10, max_reconnect_attempts=3)
    except Exception as err:  # nats-py raises several unrelated types for an unreachable server
        print(f"error: cannot connect to NATS at {args.nats}: {err}", file=sys.stderr)
        return 1
    js = nc.jetstream()
    sub = Subscriber(args, [], name_nodes=True)
    class_names = {}  # node info subject -> the node's detector classes

    async def classes_of(subject):
        key = node_info_subject(subject)
        if key not in class_names:
            try:
                raw = await js.get_last_msg(args.stream, key)
                class_names[key] = detector_classes(pb.NodeInfo.FromString(raw.data))
            except Exception as err:  # not stored (a node that never said), or not a NodeInfo
                print(f"warning: no info of {key} ({err}): classes shown by number", file=sys.stderr)
                class_names[key] = []
        return class_names[key]

    status = 0
    try:
        config = ConsumerConfig(deliver_policy=deliver, opt_start_time=start_time, ack_policy=AckPolicy.EXPLICIT)
        psub = await js.pull_subscribe(args.subject, durable=args.durable, stream=args.stream, config=config)
        done = False
        if args.until_caught_up:
            info = await psub.consumer_info()
            done = info.num_pending == 0 and info.num_ack_pending == 0
        while not done:
            wanted = JS_BATCH
            if args.max_frames is not None:
                # Never more than is still to be printed: nothing is left delivered but not
                # acknowledged for the next reader with the same durable name to wait out.
                wanted = max(1, min(JS_BATCH, args.max_frames - sub.frames))
            try:
                messages = await psub.fetch(wanted, timeout=5)
            except nats.errors.TimeoutError:
                if args.until_caught_up:
                    info = await psub.consumer_info()
                    done = info.num_pending == 0 and info.num_ack_pending == 0
                continue
            for msg in messages:
                if msg.subject.endswith("._node"):
                    try:
                        class_names[msg.subject] = detector_classes(pb.NodeInfo.FromString(msg.data))
                    except Exception as err:
                        print(f"error: skipping {msg.subject}: not a NodeInfo ({err})", file=sys.stderr)
                else:
                    try:
                        record = pb.FrameDescriptor.FromString(msg.data)
                    except Exception as err:
                        # Sent again it would fail again: said once, then taken off the consumer.
                        print(f"error: skipping a record on {msg.subject}: {err}", file=sys.stderr)
                        await msg.term()
                        continue
                    sub.class_names = await classes_of(msg.subject)
                    sub.on_message(record)
                await msg.ack()
                if args.max_frames is not None and sub.frames >= args.max_frames:
                    done = True
                elif args.until_caught_up and msg.metadata.num_pending == 0:
                    done = True
                if done:
                    break
        # The acknowledgements are on their way; this waits until the server has them.
        await nc.flush()
    except nats.js.errors.NotFoundError as err:
        print(f"error: stream {args.stream} not found on {args.nats}: {err}", file=sys.stderr)
        status = 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = 130
    finally:
        await nc.close()
    print(sub.summary())
    if args.save:
        sub.save(args.save)
        print(f"saved {len(sub.rows)} vectors to {args.save}")
    if sub.malformed and status == 0:
        status = 1
    return status


def detector_classes(info) -> list:
    return next((list(m.class_names) for m in info.models if m.role == "detector"), [])


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "jetstream":
        import asyncio

        return asyncio.run(read_jetstream(args))
    return subscribe(args) if args.command == "subscribe" else info(args)


if __name__ == "__main__":
    sys.exit(main())
