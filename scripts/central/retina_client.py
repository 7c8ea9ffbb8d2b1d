#!/usr/bin/env python3
"""A central system that uses a retina-edge node, in Python: nothing but the proto is shared.

    retina_client.py [subscribe] [--addr 127.0.0.1:50051] [--camera ID] [--class NAME]
                     [--min-score S] [--from-buffer] [--include-empty] [--full-context]
                     [--name NAME] [--frames] [--save out.npz] [--max-frames N] [--timeout S]
    retina_client.py info [--addr ...]

`subscribe` prints one line per track event (confirmed, better_view, appearance_changed, ended),
or one block per frame with --frames, then a summary. --save writes every decoded vector with
its metadata to a .npz file (see `save`). `info` prints GetNodeInfo.

Run it with the venv of `make deps`: .deps/python/bin/python scripts/central/retina_client.py
"""

import argparse
import sys
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
    if not argv or argv[0] not in ("subscribe", "info", "-h", "--help"):
        argv = ["subscribe", *argv]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--addr", default="127.0.0.1:50051", help="node's gRPC address (host:port)")
        p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                       help="wait this long for the node to accept a connection (default 10)")

    common(commands.add_parser("info", help="print the node's GetNodeInfo"))
    s = commands.add_parser("subscribe", help="stream descriptors (default)")
    common(s)
    s.add_argument("--camera", action="append", default=[], metavar="ID", help="only this camera (repeatable)")
    s.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                   help="only this class, e.g. car (repeatable)")
    s.add_argument("--min-score", type=float, default=0.0, metavar="S", help="only objects scoring at least S")
    s.add_argument("--from-buffer", action="store_true", help="start with what the node still holds")
    s.add_argument("--include-empty", action="store_true", help="also frames without objects")
    s.add_argument("--full-context", action="store_true", help="context fields in every descriptor")
    s.add_argument("--name", default="retina-client-py", help="subscriber name for the node's metrics")
    s.add_argument("--frames", action="store_true", help="print every frame, not only track events")
    s.add_argument("--save", type=Path, metavar="OUT.npz", help="save every decoded vector with metadata")
    s.add_argument("--max-frames", type=int, metavar="N", help="stop after N descriptors")
    s.add_argument("--timeout", type=float, metavar="S",
                   help="stop after S seconds (otherwise: when the node ends the stream)")
    return parser.parse_args(argv)


def connect(args):
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        # Retry a refused connection quickly: scripts start this client beside a starting node.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    channel = grpc.insecure_channel(args.addr, options=options)
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

    def __init__(self, args, class_names):
        self.args = args
        self.class_names = class_names
        self.contexts = {}  # camera_id -> rd.Context in force
        self.sequences = {}  # camera_id -> (first, last, missing)
        self.frames = 0
        self.bytes = 0
        self.events = Counter()
        self.codecs = Counter()  # (codec name, dimension) -> vectors decoded
        self.unknown_codecs = Counter()
        self.malformed = 0
        self.rows = []  # one dict per decoded vector, see save()
        self.frame_rows = []  # (camera_id, sequence, capture time ns) of every descriptor

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

    def on_descriptor(self, d):
        self.frames += 1
        self.bytes += d.ByteSize()
        cam = d.camera_id
        ctx = rd.merge_context(self.contexts.get(cam), d)
        self.contexts[cam] = ctx
        first, last, missing = self.sequences.get(cam, (d.sequence, d.sequence - 1, 0))
        if d.sequence > last + 1:
            missing += d.sequence - last - 1
        self.sequences[cam] = (first, d.sequence, missing)
        capture_ns = rd.timestamp_ns(d.capture_time)
        self.frame_rows.append((cam, d.sequence, capture_ns))
        where = f"{when(capture_ns)} {cam} #{d.sequence}"
        base = dict(camera_id=cam, node_id=ctx.node_id, node_run_id=ctx.node_run_id, sequence=d.sequence,
                    capture_time_ns=capture_ns, frame_width=ctx.frame_width, frame_height=ctx.frame_height,
                    embedder="{}@{}".format(*ctx.embedder) if ctx.embedder else "")

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
            lines.append(f"  camera {cam:<12} sequences {first}..={last}, {missing} missing{note}")
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
        "detection" or the event kind), the frame (camera, sequence, capture time, context) and the
        object (track, class, score, box, capture time of the view). The `frame_*` arrays list
        every descriptor received, with or without vectors."""
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
        )


def subscribe(args) -> int:
    channel, stub = connect(args)
    info = stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=args.connect_timeout)
    class_names = next((list(m.class_names) for m in info.models if m.role == "detector"), [])
    request = pb.SubscribeRequest(
        camera_ids=args.camera,
        class_names=args.classes,
        min_score=args.min_score,
        include_empty_frames=args.include_empty,
        start=pb.START_POSITION_EARLIEST_BUFFERED if args.from_buffer else pb.START_POSITION_LIVE,
        subscriber_name=args.name,
        full_context=args.full_context,
    )
    sub = Subscriber(args, class_names)
    call = stub.Subscribe(request, timeout=args.timeout)
    status = 0
    try:
        for d in call:
            sub.on_descriptor(d)
            if args.max_frames is not None and sub.frames >= args.max_frames:
                call.cancel()
                break
    except grpc.RpcError as err:
        # Our own --timeout or --max-frames end the stream too; anything else is a failure.
        if err.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            print(f"error: Subscribe failed: {err.code().name}: {err.details()}", file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        call.cancel()
        status = 130
    finally:
        channel.close()
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


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return subscribe(args) if args.command == "subscribe" else info(args)


if __name__ == "__main__":
    sys.exit(main())
