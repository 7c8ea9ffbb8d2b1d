"""Unit tests of retina_decode on hand-made messages whose decoded values are worked out by hand.

Run: .deps/python/bin/python -m unittest discover scripts/central
"""

import struct
import sys
import unittest
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import retina_decode as rd  # noqa: E402
import retina_proto  # noqa: E402

pb, _ = retina_proto.load()


def embedding(codec, dimension, data, scale=0.0):
    return pb.Embedding(codec=codec, dimension=dimension, data=bytes(data), scale=scale)


class EmbeddingCodecs(unittest.TestCase):
    def test_f32_is_little_endian_binary32(self):
        values = [0.6, -0.8, 0.0]
        e = embedding(rd.F32, 3, struct.pack("<3f", *values))
        np.testing.assert_array_equal(rd.decode_embedding(e), np.array(values, np.float32))

    def test_f16_by_hand(self):
        # binary16, little-endian: 1.0 = 0x3C00, -2.0 = 0xC000, 0.5 = 0x3800, 0x0001 is the
        # smallest subnormal 2^-24, 0x7BFF the largest finite value 65504.
        data = b"\x00\x3c" b"\x00\xc0" b"\x00\x38" b"\x01\x00" b"\xff\x7b"
        v = rd.decode_embedding(embedding(rd.F16, 5, data))
        self.assertEqual(v.dtype, np.float32)
        self.assertEqual(v.tolist(), [1.0, -2.0, 0.5, 2.0**-24, 65504.0])

    def test_int8_and_pca_int8_multiply_by_scale(self):
        # q = 127, -127 (0x81), 0, 1; v = q * scale in float32.
        for codec in (rd.INT8, rd.PCA_INT8):
            v = rd.decode_embedding(embedding(codec, 4, [0x7F, 0x81, 0x00, 0x01], scale=0.01))
            expected = np.array([127, -127, 0, 1], np.float32) * np.float32(0.01)
            np.testing.assert_array_equal(v, expected)

    def test_binary_by_hand(self):
        # d = 16, so each value is +-1/sqrt(16) = +-0.25. Byte 0 = 0b00000101: bits 0 and 2 set
        # (least significant first); byte 1 = 0b10000000: bit 8 + 7 = 15 set.
        v = rd.decode_embedding(embedding(rd.BINARY, 16, [0b00000101, 0b10000000]))
        expected = [-0.25] * 16
        for i in (0, 2, 15):
            expected[i] = 0.25
        self.assertEqual(v.tolist(), expected)
        self.assertAlmostEqual(float(v @ v), 1.0, places=6)

    def test_binary_dot_product_is_one_minus_twice_the_hamming_fraction(self):
        a = bytes([0b00000101, 0b10000000, 0xFF, 0x00])
        b = bytes([0b00000100, 0b10000001, 0x0F, 0x00])
        h = rd.hamming(a, b)
        self.assertEqual(h, 1 + 1 + 4)
        va = rd.decode_embedding(embedding(rd.BINARY, 32, a))
        vb = rd.decode_embedding(embedding(rd.BINARY, 32, b))
        self.assertAlmostEqual(float(va @ vb), 1 - 2 * h / 32, places=6)

    def test_lengths_are_checked(self):
        bad = [
            embedding(rd.F32, 2, b"\x00" * 7),
            embedding(rd.F16, 2, b"\x00" * 3),
            embedding(rd.INT8, 2, b"\x00"),
            embedding(rd.PCA_INT8, 2, b"\x00" * 3),
            embedding(rd.BINARY, 16, b"\x00"),
            embedding(rd.BINARY, 12, b"\x00" * 2),  # not a multiple of 8
        ]
        for e in bad:
            with self.subTest(codec=e.codec, dimension=e.dimension, length=len(e.data)):
                with self.assertRaises(ValueError) as caught:
                    rd.decode_embedding(e)
                self.assertNotIsInstance(caught.exception, rd.UnknownCodec)

    def test_unknown_codecs_are_reported_as_such(self):
        for codec in (0, 6, 99):
            with self.assertRaises(rd.UnknownCodec) as caught:
                rd.decode_embedding(embedding(codec, 4, b"\x00" * 4))
            self.assertEqual(caught.exception.codec, codec)


class Geometry(unittest.TestCase):
    def test_box_q16_by_hand(self):
        box = 0 | (65535 << 16) | (32768 << 32) | (1 << 48)
        self.assertEqual(rd.decode_box_q16(box), (0.0, 1.0, 32768 / 65535, 1 / 65535))

    def test_trajectory_by_hand(self):
        s = pb.TrackSummary(trajectory_offsets_ms=[0, 200], trajectory_points=[65535, 65535 << 16])
        self.assertEqual(rd.decode_trajectory(s), [(0, 1.0, 0.0), (200_000_000, 0.0, 1.0)])
        s.trajectory_points.append(0)
        with self.assertRaises(ValueError):
            rd.decode_trajectory(s)

    def test_score_q8_and_track_number(self):
        self.assertEqual(rd.decode_score_q8(255), 1.0)
        self.assertEqual(rd.track_number((1_763_950_000 << 24) | 17), 17)


class ProtoNumbers(unittest.TestCase):
    def test_the_decoder_numbers_what_the_proto_numbers(self):
        codecs = {rd.F32: "F32", rd.INT8: "INT8", rd.F16: "F16", rd.PCA_INT8: "PCA_INT8", rd.BINARY: "BINARY"}
        for value, name in codecs.items():
            self.assertEqual(pb.EmbeddingCodec.Value(f"EMBEDDING_CODEC_{name}"), value)
        for value, name in rd.EVENT_KINDS.items():
            self.assertEqual(pb.TrackEventKind.Value(f"TRACK_EVENT_KIND_{name.upper()}"), value)
        for value, name in rd.END_REASONS.items():
            self.assertEqual(pb.TrackEndReason.Value(f"TRACK_END_REASON_{name.upper().replace(' ', '_')}"), value)
        self.assertEqual(pb.LOG_GAP_REASON_EVICTED, 1)
        self.assertEqual(pb.LOG_GAP_REASON_NOT_STORED, 2)
        self.assertEqual(pb.LOG_GAP_REASON_LOST_IN_CRASH, 3)
        self.assertEqual(
            set(rd.GAP_REASONS),
            {pb.LOG_GAP_REASON_EVICTED, pb.LOG_GAP_REASON_NOT_STORED, pb.LOG_GAP_REASON_LOST_IN_CRASH},
        )


class GapNotices(unittest.TestCase):
    def test_a_gap_notice_names_its_offsets_and_reason(self):
        evicted = pb.LogGap(first_offset=5, last_offset=9, reason=pb.LOG_GAP_REASON_EVICTED)
        self.assertEqual(rd.gap_text(evicted), "gap: offsets 5..=9 will not arrive (evicted by retention)")
        lost = pb.LogGap(first_offset=12, last_offset=12, reason=pb.LOG_GAP_REASON_NOT_STORED)
        self.assertEqual(rd.gap_text(lost), "gap: offsets 12..=12 will not arrive (never stored)")
        # A reason this client does not know yet is named as such, not an error.
        self.assertEqual(rd.gap_text(pb.LogGap(first_offset=1, last_offset=2, reason=9)),
                         "gap: offsets 1..=2 will not arrive (unknown reason)")


class ContextFields(unittest.TestCase):
    def test_unset_fields_carry_the_last_sent_value(self):
        first = pb.FrameDescriptor(
            node_id="n1",
            node_run_id=7,
            frame_width=640,
            frame_height=272,
            detector=pb.ModelRef(id="det", version="1"),
            embedder=pb.ModelRef(id="emb", version="2"),
            camera_position=pb.CameraPosition(latitude=1.5, longitude=2.5, description="pole"),
        )
        c1 = rd.merge_context(None, first)
        c2 = rd.merge_context(c1, pb.FrameDescriptor(sequence=1))
        self.assertEqual(c2, c1)
        self.assertEqual(c2.embedder, ("emb", "2"))
        # A change resends the whole context, as the node does; a position no longer there is gone.
        changed = pb.FrameDescriptor(sequence=2)
        changed.CopyFrom(first)
        changed.frame_width, changed.frame_height = 320, 136
        changed.ClearField("camera_position")
        c3 = rd.merge_context(c2, changed)
        self.assertEqual((c3.frame_width, c3.frame_height, c3.node_id), (320, 136, "n1"))
        self.assertEqual(c3.embedder, ("emb", "2"))
        self.assertIsNone(c3.camera_position)


if __name__ == "__main__":
    unittest.main()


class ZonesAndCounts(unittest.TestCase):
    def test_zone_events_and_count_records_read_as_the_rust_cli_prints_them(self):
        from types import SimpleNamespace as N
        self.assertEqual(rd.zone_event_text(3, "lane-2", "northbound", 0.0), "crossed lane-2 northbound")
        self.assertEqual(rd.zone_event_text(2, "queue", "", 12.04), "left queue after 12.0 s")
        report = N(counts=[N(zone_id="lane-2", kind=3, direction="northbound", class_name="car", count=42)],
                   occupancy=[N(zone_id="queue", class_name="car", now=3, max=5)])
        self.assertEqual(rd.counts_text(report),
                         "lane-2 crossed northbound car 42; inside: queue car 3 now, 5 at most")
        self.assertEqual(rd.counts_text(N(counts=[], occupancy=[])), "nothing counted")
