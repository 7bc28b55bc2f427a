//! Running the official phoenix.js client under Node: the `tests/js` directory, its npm
//! packages (installed from the lock file when missing), the Node version, and child processes
//! whose output is collected and that are killed at a deadline or on drop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `npm ci` must finish within this.
const NPM_INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// `tests/js`, where the Node side of the tests lives.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// `(major, minor)` of the installed Node; panics with an install hint if there is none or it
/// is older than 18 (`node --test`).
pub fn node_version() -> (u32, u32) {
    let output = match Command::new("node").arg("--version").output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "node not found: install Node.js 18 or later (apt-get install nodejs npm) to run \
             the phoenix.js tests"
        ),
        Err(e) => panic!("cannot run `node --version`: {e}"),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.trim().trim_start_matches('v').split('.');
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    assert!(
        major >= 18,
        "Node.js {} is too old for `node --test`: install 18 or later",
        text.trim()
    );
    (major, minor)
}

/// Installs `tests/js/node_modules` from the lock file unless every package is there.
pub fn ensure_npm_packages() {
    let dir = js_dir();
    let installed = ["phoenix", "ws", "playwright-core"].iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    });
    if installed {
        return;
    }
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir);
    let (status, output) = Captured::spawn(npm, "npm").finish(NPM_INSTALL_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "`npm ci` in {} failed:\n{output}",
        dir.display()
    );
}

/// A child process with its output collected on two threads; killed on drop.
pub struct Captured {
    child: Child,
    what: &'static str,
    readers: Vec<JoinHandle<String>>,
}

impl Captured {
    /// Starts `command` with stdin closed and stdout/stderr collected.
    pub fn spawn(mut command: Command, what: &'static str) -> Captured {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => panic!(
                    "{what} not found: install Node.js 18 or later (apt-get install nodejs npm) \
                     to run the phoenix.js tests"
                ),
                _ => panic!("cannot start {what}: {e}"),
            });
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        let readers = vec![read_to_end(stdout), read_to_end(stderr)];
        Captured {
            child,
            what,
            readers,
        }
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the exit (killing the process after it); returns the status
    /// (`None` if it had to be killed) and everything it wrote.
    pub fn finish(mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let mut output = String::new();
        for reader in self.readers.drain(..) {
            output.push_str(&reader.join().unwrap_or_default());
        }
        if status.is_none() {
            output.push_str(&format!("\n<{} killed after {timeout:?}>\n", self.what));
        }
        (status, output)
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        // A panic between spawn and finish must not leave the process running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_to_end(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
