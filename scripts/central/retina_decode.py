"""Decoding rules of proto/retina/v1/retina.proto, as pure functions.

Each function follows the comment of the proto field it decodes; the proto is normative. The
functions take the generated message objects (or anything with the same attributes) and never
touch the network, so they are unit-tested on hand-made messages (test_decode.py).
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

# EmbeddingCodec values, as numbered in the proto.
F32, INT8, F16, PCA_INT8, BINARY = 1, 2, 3, 4, 5
CODEC_NAMES = {F32: "f32", INT8: "int8", F16: "f16", PCA_INT8: "pca-int8", BINARY: "binary"}
# TrackEventKind values and their names, as `retina-edge subscribe` and the node's metrics say them.
CONFIRMED, BETTER_VIEW, APPEARANCE_CHANGED, ENDED = 1, 2, 3, 4
EVENT_KINDS = {CONFIRMED: "confirmed", BETTER_VIEW: "better_view", APPEARANCE_CHANGED: "appearance_changed", ENDED: "ended"}
END_REASONS = {1: "lost", 2: "clock step", 3: "stopped"}
# ZoneEventKind values, as `retina-edge subscribe` and the metrics name them.
ZONE_EVENT_KINDS = {1: "entered", 2: "left", 3: "crossed"}


def zone_event_text(kind: int, zone_id: str, direction: str, dwell_seconds: float) -> str:
    """What a track did at a zone or line: "crossed lane-2 northbound", "left queue after 12.0 s"."""
    text = f"{ZONE_EVENT_KINDS.get(kind, f'kind-{kind}')} {zone_id}"
    if direction:
        text += f" {direction}"
    if kind == 2:
        text += f" after {dwell_seconds:.1f} s"
    return text


def counts_text(report) -> str:
    """A count record's counts: "lane-2 crossed northbound car 42, ...", or "nothing counted"."""
    counts = [" ".join(filter(None, [c.zone_id, ZONE_EVENT_KINDS.get(c.kind, f"kind-{c.kind}"), c.direction,
                                     c.class_name, str(c.count)]))
              for c in report.counts]
    inside = [f"{o.zone_id} {o.class_name} {o.now} now, {o.max} at most" for o in report.occupancy]
    text = ", ".join(counts) or "nothing counted"
    return text + (f"; inside: {', '.join(inside)}" if inside else "")
# LogGapReason values, worded as `retina-edge subscribe` words them.
GAP_REASONS = {
    1: "evicted by retention",
    2: "never stored",
    3: "skipped at a restart after a crash; the first may have been sent live",
}


class UnknownCodec(ValueError):
    """A codec this client does not know: skip the vector (the proto says so), don't fail."""

    def __init__(self, codec: int):
        super().__init__(f"unknown embedding codec {codec}")
        self.codec = codec


def codec_name(codec: int) -> str:
    return CODEC_NAMES.get(codec, f"codec-{codec}")


def _check_length(e, name: str, expected: int) -> None:
    if len(e.data) != expected:
        raise ValueError(
            f"{name} embedding of dimension {e.dimension} needs {expected} bytes, got {len(e.data)}"
        )


def decode_embedding(e) -> np.ndarray:
    """An Embedding message as a float32 vector of `dimension` values (see EmbeddingCodec).

    Raises UnknownCodec for codecs not in the proto this was written against, ValueError for a
    message whose data does not fit its codec and dimension.
    """
    d = int(e.dimension)
    if e.codec == F32:
        _check_length(e, "f32", 4 * d)
        return np.frombuffer(e.data, dtype="<f4").astype(np.float32)
    if e.codec == F16:
        _check_length(e, "f16", 2 * d)
        return np.frombuffer(e.data, dtype="<f2").astype(np.float32)
    if e.codec in (INT8, PCA_INT8):
        # v[i] = q[i] * scale, in float32 like the node.
        _check_length(e, codec_name(e.codec), d)
        return np.frombuffer(e.data, dtype=np.int8).astype(np.float32) * np.float32(e.scale)
    if e.codec == BINARY:
        if d % 8:
            raise ValueError(f"binary embedding of dimension {d}: not a multiple of 8")
        _check_length(e, "binary", d // 8)
        # Bit i is in byte i // 8 at position i % 8, least significant first.
        bits = np.unpackbits(np.frombuffer(e.data, dtype=np.uint8), bitorder="little")
        magnitude = np.float32(1.0) / np.sqrt(np.float32(d))
        return np.where(bits == 1, magnitude, -magnitude).astype(np.float32)
    raise UnknownCodec(e.codec)


def hamming(a: bytes, b: bytes) -> int:
    """Hamming distance of two BINARY codes; their decoded dot product is 1 - 2 * hamming / d."""
    if len(a) != len(b):
        raise ValueError(f"codes of {len(a)} and {len(b)} bytes")
    x = np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8))
    return int(np.unpackbits(x).sum())


def decode_box_q16(box_q16: int) -> tuple:
    """(x_min, y_min, x_max, y_max), normalised, from TrackedObject/TrackView.box_q16."""
    return tuple(((box_q16 >> shift) & 0xFFFF) / 65535 for shift in (0, 16, 32, 48))


def decode_point_q16(point: int) -> tuple:
    """(x, y), normalised, from one TrackSummary.trajectory_points value."""
    return ((point & 0xFFFF) / 65535, ((point >> 16) & 0xFFFF) / 65535)


def decode_score_q8(score_q8: int) -> float:
    return score_q8 / 255


def timestamp_ns(ts) -> int:
    """A google.protobuf.Timestamp as integer Unix nanoseconds (floats would lose the ns)."""
    return ts.seconds * 1_000_000_000 + ts.nanos


def decode_trajectory(summary) -> list:
    """[(ns after first_seen, x, y), ...] from a TrackSummary."""
    offsets, points = summary.trajectory_offsets_ms, summary.trajectory_points
    if len(offsets) != len(points):
        raise ValueError(f"trajectory with {len(offsets)} offsets but {len(points)} points")
    return [(ms * 1_000_000, *decode_point_q16(p)) for ms, p in zip(offsets, points)]


def gap_text(gap) -> str:
    """A gap notice (FrameDescriptor.gap, a LogGap) for a person: the offsets that will not arrive."""
    reason = GAP_REASONS.get(gap.reason, "unknown reason")
    return f"gap: offsets {gap.first_offset}..={gap.last_offset} will not arrive ({reason})"


def track_number(track_id: int) -> int:
    """The per-camera counter in the low 24 bits of a track id (the high 40 bits are the
    node's start time in seconds): short enough for a person to read."""
    return track_id & 0xFFFFFF


@dataclass(frozen=True)
class Context:
    """The context fields of a FrameDescriptor, as in force for one camera."""

    node_id: str = ""
    node_run_id: int = 0
    frame_width: int = 0
    frame_height: int = 0
    detector: Optional[tuple] = None  # (id, version)
    embedder: Optional[tuple] = None  # (id, version)
    camera_position: Optional[tuple] = None  # (latitude, longitude, heading_degrees, description)


def merge_context(previous: Optional[Context], d) -> Context:
    """The context in force for descriptor `d`, given the one in force before on its camera.

    Unless the subscriber asked for `full_context`, the node sends the context fields all together,
    with `detector` always set, when any of them changes, and none of them otherwise.
    """
    if not d.HasField("detector"):
        return previous or Context()
    position = None
    if d.HasField("camera_position"):
        c = d.camera_position
        position = (c.latitude, c.longitude, c.heading_degrees, c.description)
    embedder = (d.embedder.id, d.embedder.version) if d.HasField("embedder") else None
    return Context(
        node_id=d.node_id,
        node_run_id=d.node_run_id,
        frame_width=d.frame_width,
        frame_height=d.frame_height,
        detector=(d.detector.id, d.detector.version),
        embedder=embedder,
        camera_position=position,
    )
