//! Start-up checks for what glommio needs from the kernel: io_uring and locked memory.
//!
//! Each check turns a low-level failure into a sentence that says what to change, because
//! "Operation not permitted" from deep inside an executor tells an operator nothing.

use std::fmt;

/// Bytes of io_uring buffer memory each shard registers (glommio's minimum is 64 KiB; we do
/// no file I/O, so a small pool is enough).
pub const IO_MEMORY_PER_SHARD: usize = 512 * 1024;

/// What is missing, and how to fix it.
#[derive(Debug)]
pub struct RuntimeProblem(String);

impl fmt::Display for RuntimeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuntimeProblem {}

/// Raises the locked-memory limit as far as allowed and checks that io_uring is enabled.
pub fn prepare(shards: usize) -> Result<(), RuntimeProblem> {
    check_io_uring_sysctl()?;
    raise_memlock(shards)
}

fn check_io_uring_sysctl() -> Result<(), RuntimeProblem> {
    // Linux ≥ 6.6: 0 = enabled, 1 = unprivileged disabled, 2 = disabled for everyone.
    let Ok(value) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") else {
        return Ok(());
    };
    match value.trim() {
        "2" => Err(RuntimeProblem(
            "io_uring is disabled on this host (kernel.io_uring_disabled = 2); glommio needs it: \
             run `sysctl -w kernel.io_uring_disabled=0`"
                .into(),
        )),
        // SAFETY: `geteuid` takes no arguments, cannot fail and touches no memory of ours.
        "1" if unsafe { libc::geteuid() } != 0 => Err(RuntimeProblem(
            "io_uring is disabled for unprivileged users (kernel.io_uring_disabled = 1); run \
             `sysctl -w kernel.io_uring_disabled=0`, or add this user to the group in \
             kernel.io_uring_group"
                .into(),
        )),
        _ => Ok(()),
    }
}

fn raise_memlock(shards: usize) -> Result<(), RuntimeProblem> {
    // Registered buffers plus the rings themselves, with room to spare.
    let needed = (shards as u64) * (IO_MEMORY_PER_SHARD as u64 + 1024 * 1024);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live, writable `rlimit` for the whole call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(());
    }
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed {
        return Ok(());
    }
    // Try to raise the soft limit to the hard limit (or beyond, with CAP_IPC_LOCK / root).
    let wanted = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `wanted` is a live `rlimit` that the call only reads.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &wanted) } == 0 {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `raised` is a live `rlimit` that the call only reads.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0
        && (limit.rlim_max == libc::RLIM_INFINITY || limit.rlim_max >= needed)
    {
        return Ok(());
    }
    Err(RuntimeProblem(format!(
        "locked memory limit too low for {shards} shard(s): {} KiB allowed, {} KiB needed; \
         raise it with `ulimit -l {}` (or LimitMEMLOCK= in a systemd unit, or --ulimit memlock \
         in a container), or run with CAP_IPC_LOCK",
        limit.rlim_max / 1024,
        needed / 1024,
        needed / 1024
    )))
}

/// Explains an executor that failed to start, most likely for lack of io_uring.
pub fn explain_executor_failure(err: impl fmt::Display) -> RuntimeProblem {
    RuntimeProblem(format!(
        "cannot start a glommio executor ({err}); glommio needs Linux ≥ 5.8 with io_uring \
         enabled (check /proc/sys/kernel/io_uring_disabled is 0, and that no seccomp profile \
         such as a container default blocks io_uring_setup) and enough locked memory \
         (`ulimit -l`)"
    ))
}
