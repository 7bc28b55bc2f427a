//! Giving freed memory back to the kernel.
//!
//! glibc keeps freed memory in its arenas: after a burst (a presence join storm sends every
//! joiner its topic's whole state; a dropped presence copy frees its members) the process
//! would keep its peak RSS for good. The callers trim only after such a burst, never on a
//! steady path.

/// Releases the allocator's free memory (every arena) to the kernel.
pub fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
