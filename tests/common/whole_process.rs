//! Child processes that live as long as the test process and no longer: deployments shared by
//! every test of a binary (a Sentinel deployment, a Redis Cluster) are held in `static`s, which
//! are never dropped, so their processes cannot be killed on `Drop`. They are spawned here, from
//! one long-lived thread, with `PR_SET_PDEATHSIG`: the kernel kills each child when that thread
//! (so the test process) ends, however it ends.
//!
//! It owns that thread; it must never be used for a process a test wants to outlive it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Spawns `command` from a thread that lives as long as the test process, with
/// `PR_SET_PDEATHSIG`: the child is killed when that thread (so the process) ends.
pub fn spawn_for_the_whole_process(command: Command) -> Child {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("redis-spawner".into())
            .spawn(move || {
                for (mut command, answer) in rx {
                    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
                    unsafe {
                        command.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = answer.send(command.spawn());
                }
            })
            .expect("a thread can be spawned");
        Mutex::new(tx)
    });
    let (answer_tx, answer_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, answer_tx))
        .expect("the spawner thread lives as long as the process");
    match answer_rx.recv().expect("the spawner answers") {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-server not found: install it (apt-get install redis-server)")
        }
        Err(e) => panic!("cannot spawn redis-server: {e}"),
    }
}
