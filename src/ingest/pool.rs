//! Recycled frame buffers. Every analysed or dropped frame would otherwise free a few hundred
//! kilobytes on one thread while a GStreamer thread allocates the same again: at 100 frames/s
//! that churn makes glibc's per-thread arenas hold on to ever more memory. Frames return their
//! buffer here instead, and the pool keeps at most `MAX_POOLED` of them.

use std::sync::Mutex;

const MAX_POOLED: usize = 32;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for `len` bytes, recycled when one of a fitting size is free.
pub fn take(len: usize) -> Vec<u8> {
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    // A buffer much larger than needed would pin memory for a camera that shrank.
    match pool.iter().position(|b| b.capacity() >= len && b.capacity() <= len * 2) {
        Some(i) => {
            let mut buffer = pool.swap_remove(i);
            buffer.clear();
            buffer
        }
        None => Vec::with_capacity(len),
    }
}

/// Gives a frame's buffer back for reuse.
pub fn give(buffer: Vec<u8>) {
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < MAX_POOLED {
        pool.push(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_only_when_they_fit() {
        let mut b = take(1000);
        b.extend_from_slice(&[7; 1000]);
        let ptr = b.as_ptr();
        give(b);
        let again = take(900);
        assert!(again.is_empty() && again.capacity() >= 900);
        assert_eq!(again.as_ptr(), ptr, "the same allocation came back");
        give(again);
        // Far too big for a 10-byte frame: a fresh allocation instead.
        assert!(take(10).capacity() < 1000);
    }
}
