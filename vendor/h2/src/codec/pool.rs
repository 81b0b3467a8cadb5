//! corral: buffers that idle connections let go, kept per thread (a few)
//! for the next connection with something to read or write, so a
//! connection gives its buffers back while it waits without costing a
//! large allocation each time it wakes.

use bytes::BytesMut;
use std::cell::RefCell;

/// What a buffer taken holds at least: h2's write buffer size (a HEADERS
/// frame of the minimum MAX_FRAME_SIZE fits).
pub(crate) const CAPACITY: usize = 16 * 1024;

/// Buffers kept per thread at most (256 KiB), and the largest kept: one
/// grown for a large frame goes back to the allocator.
const KEPT: usize = 16;
const LARGEST_KEPT: usize = 4 * CAPACITY;

thread_local! {
    static KEPT_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of at least `CAPACITY`.
pub(crate) fn take() -> BytesMut {
    KEPT_BUFFERS
        .try_with(|kept| kept.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| BytesMut::with_capacity(CAPACITY))
}

/// Keeps `buf` for another connection when it is empty, shared with
/// nothing (no frame or string still points into it) and not too large;
/// else lets it go.
pub(crate) fn give(mut buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() > LARGEST_KEPT || !buf.try_reclaim(CAPACITY) {
        return;
    }
    let _ = KEPT_BUFFERS.try_with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.len() < KEPT {
            kept.push(buf);
        }
    });
}
