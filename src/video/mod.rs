//! The video stream, kept at the edge: each camera's compressed stream in a ring of short
//! segments on disk ([`ring`], written by [`record`] from the camera's pipeline, without
//! re-encoding), the frames the ring has not written yet in memory ([`live`]: its muxer holds a
//! group of pictures back), and pixels cut from both on request ([`export`]: frames decoded at
//! their capture times, JPEG and MP4 encoding).
//!
//! It sits below the stages: `ingest` feeds the recorder, `deliver` reads the ring, and neither
//! reaches the other through it. What leaves the node is decided in `deliver::pixels` (faces
//! blurred, scopes, limits, audit records).

pub mod export;
pub mod live;
pub mod record;
pub mod ring;
