//! In-process RTSP test cameras (written by the helper; placeholder so the crate builds).
