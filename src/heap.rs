//! The process's memory allocator, and giving freed memory back to the kernel.
//!
//! The allocator is jemalloc, configured here, without per-thread caches. Presence hands
//! allocations between threads: the shards free what the Redis threads allocated (diff
//! frames, states) and the Redis threads free what the shards allocated (join commands). With
//! a per-thread cache (glibc's tcache, jemalloc's tcache alike) a free lands in the *freeing*
//! thread's cache and the region is then reused for that thread's own long-lived data, so the
//! short- and long-lived data of all threads end up on the same pages, which can never be
//! given back: after a join storm glibc kept +222 B a connection for +20 B of live data, and
//! jemalloc with its cache ~1.3 MB of half-empty slabs plus ~0.9 MB of cached regions
//! (docs/benchmarks.md, "Memory per connection, session 4"). Without the cache a freed region
//! goes straight back to the slab it came from, and a background thread purges empty pages
//! about a second after they are freed; no thread polls for it while nothing is freed.
//!
//! The callers still [`trim`] after a burst (dropped presence copies, a storm of writes) so that
//! the memory goes back at once rather than over the decay time. jemalloc is built with its
//! statistics, so that `malloc_stats_print` (e.g. called through gdb) can say where the
//! memory of a running server is.

use std::ffi::{c_void, CStr};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read by jemalloc before `main` (the symbol name is that of the
/// `tikv-jemalloc-sys` build, whose symbols are prefixed; `_RJEM_MALLOC_CONF` in the
/// environment overrides any of them):
/// - `tcache:false`: no per-thread cache of freed regions (see above); the fan-out and join
///   paths measured no slower without it (docs/benchmarks.md);
/// - `background_thread:true`: a thread purges freed pages, so an idle process gives memory
///   back without the serving threads doing it on their hot paths;
/// - `dirty_decay_ms:1000`, `muzzy_decay_ms:0`: freed pages go back to the kernel about a
///   second after they are freed (jemalloc's default keeps them ten seconds, then keeps them
///   "muzzy", still counted in RSS, ten more).
pub const MALLOC_CONF: &[u8] =
    b"tcache:false,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// What jemalloc reads: a `const char *` to [`MALLOC_CONF`] (a thin pointer, unlike `&CStr`).
#[used]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF_PTR: &u8 = &MALLOC_CONF[0];

/// Gives the allocator's free pages (every arena) back to the kernel now.
pub fn trim() {
    // SAFETY: "arena.<i>.purge" takes no input and gives no output (all pointers null, length
    // 0), as jemalloc's manual specifies; 4096 is MALLCTL_ARENAS_ALL, every arena. An error
    // is ignored: trimming is an optimisation.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut::<c_void>(),
            std::ptr::null_mut(),
            std::ptr::null_mut::<c_void>(),
            0,
        );
    }
}

/// A boolean option of the running allocator (`opt.<name>`), for the start-up log and tests.
pub fn option_bool(name: &CStr) -> Option<bool> {
    // SAFETY: boolean options are C `bool`s.
    unsafe { read_ctl::<bool>(name) }
}

/// A signed integer option of the running allocator (`opt.dirty_decay_ms` and the like).
pub fn option_isize(name: &CStr) -> Option<isize> {
    // SAFETY: decay options are `ssize_t`s.
    unsafe { read_ctl::<isize>(name) }
}

/// Bytes the calling thread has allocated since it started (jemalloc's `thread.allocated`):
/// what a test reads to see what a piece of code allocates.
pub fn thread_allocated_bytes() -> Option<u64> {
    // SAFETY: `thread.allocated` is a `uint64_t`.
    unsafe { read_ctl::<u64>(c"thread.allocated") }
}

/// Bytes the calling thread has freed since it started (jemalloc's `thread.deallocated`).
pub fn thread_deallocated_bytes() -> Option<u64> {
    // SAFETY: `thread.deallocated` is a `uint64_t`.
    unsafe { read_ctl::<u64>(c"thread.deallocated") }
}

/// Reads a jemalloc control; None if jemalloc does not know it or its size is not `T`'s.
///
/// # Safety
/// `T` must be the C type jemalloc documents for `name`, which it then writes a valid value of.
unsafe fn read_ctl<T: Copy + Default>(name: &CStr) -> Option<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>();
    let rc = tikv_jemalloc_sys::mallctl(
        name.as_ptr(),
        (&mut value as *mut T).cast::<c_void>(),
        &mut len,
        std::ptr::null_mut(),
        0,
    );
    (rc == 0 && len == std::mem::size_of::<T>()).then_some(value)
}

/// What the start-up log says of the allocator.
pub fn describe() -> String {
    format!(
        "jemalloc tcache={:?} background_thread={:?} dirty_decay_ms={:?} muzzy_decay_ms={:?}",
        option_bool(c"opt.tcache"),
        option_bool(c"opt.background_thread"),
        option_isize(c"opt.dirty_decay_ms"),
        option_isize(c"opt.muzzy_decay_ms"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_runs_with_the_configured_options() {
        // Fails if the options symbol is misnamed (jemalloc would then run on its defaults:
        // no background thread, 10 s decay) or if another allocator is in use (no options).
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            return; // the environment overrides the options on purpose
        }
        assert_eq!(option_bool(c"opt.tcache"), Some(false));
        assert_eq!(option_bool(c"opt.background_thread"), Some(true));
        assert_eq!(option_isize(c"opt.dirty_decay_ms"), Some(1000));
        assert_eq!(option_isize(c"opt.muzzy_decay_ms"), Some(0));
    }

    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn trimming_gives_freed_pages_back_at_once_and_keeps_live_data() {
        // 64 MiB in small regions (the size of presence strings), then freed: without the
        // purge they would stay resident until the decay (about a second) has run.
        let kept: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 300]).collect();
        let burst: Vec<Vec<u8>> = (0..(64 << 20) / 256).map(|_| vec![1u8; 256]).collect();
        let before_free = resident_bytes();
        drop(burst);
        trim();
        let after_trim = resident_bytes();
        assert!(
            before_free.saturating_sub(after_trim) >= 48 << 20,
            "only {} of the 64 MiB freed went back",
            before_free.saturating_sub(after_trim)
        );
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, v)| v.iter().all(|&b| b == i as u8)));
    }
}
