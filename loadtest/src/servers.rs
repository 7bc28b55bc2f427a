//! The server processes of a run, when there are several (`kind = "cluster"`): either spawned
//! here (`--spawn <channel binary>`: N × `channel serve --shards S` on free ports, pointed at the
//! run's Redis or Redis Cluster) or given as a comma-separated `--url` list; and the one figure
//! read from each of them, the messages its Redis reader received
//! (`channel_redis_messages_received_total` on `GET /metrics`).
//!
//! It owns the spawned processes: they are killed when the [`SpawnedServers`] is dropped, and
//! with `PR_SET_PDEATHSIG` when loadtest dies, so a run never leaves a server behind. It never
//! drives a client.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The counter of messages a `channel` process received from Redis (all its subscriptions:
/// `PSUBSCRIBE to:*` and the sharded ones).
pub const RECEIVED_METRIC: &str = "channel_redis_messages_received_total";
/// How long a spawned server may take to answer `/healthz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the spawned servers take their Redis from.
pub enum RedisTarget<'a> {
    /// `--redis-url redis://…`.
    Single(&'a str),
    /// `--redis-cluster host:port,…`.
    Cluster(&'a str),
}

/// What to spawn.
pub struct SpawnPlan<'a> {
    pub binary: &'a Path,
    pub processes: usize,
    pub shards: usize,
    pub redis: RedisTarget<'a>,
    /// The tokens' HS256 secret, shared by every process.
    pub jwt_secret: &'a str,
    /// Each process writes its log to `<log_dir>/server-<k>.log`.
    pub log_dir: &'a Path,
}

/// `channel serve` processes started for one run.
pub struct SpawnedServers {
    children: Vec<Child>,
    /// `http://127.0.0.1:<port>` of each, in order.
    pub urls: Vec<String>,
    logs: Vec<PathBuf>,
}

impl SpawnedServers {
    /// Starts every process, then waits until each answers `GET /healthz` with 200 (its Redis
    /// core is connected).
    pub fn start(plan: &SpawnPlan) -> Result<SpawnedServers> {
        std::fs::create_dir_all(plan.log_dir)
            .with_context(|| format!("creating {}", plan.log_dir.display()))?;
        let mut servers = SpawnedServers {
            children: Vec::new(),
            urls: Vec::new(),
            logs: Vec::new(),
        };
        for k in 0..plan.processes {
            let port = free_port()?;
            let log_path = plan.log_dir.join(format!("server-{k}.log"));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let mut command = Command::new(plan.binary);
            command
                .arg("serve")
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--shards", &plan.shards.to_string()])
                // The env, not --jwt-secret: the secret stays out of `ps`.
                .env("CHANNEL_JWT_SECRET", plan.jwt_secret)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            match plan.redis {
                RedisTarget::Single(url) => command.args(["--redis-url", url]),
                RedisTarget::Cluster(seeds) => command.args(["--redis-cluster", seeds]),
            };
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = command
                .spawn()
                .with_context(|| format!("spawning {} serve", plan.binary.display()))?;
            servers.children.push(child);
            servers.urls.push(format!("http://127.0.0.1:{port}"));
            servers.logs.push(log_path);
        }
        for k in 0..plan.processes {
            servers.wait_ready(k)?;
        }
        Ok(servers)
    }

    /// The process ids, in the order of [`Self::urls`].
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    fn wait_ready(&mut self, k: usize) -> Result<()> {
        let addr: SocketAddr = self.urls[k]
            .trim_start_matches("http://")
            .parse()
            .context("a URL built from 127.0.0.1 and a port")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.children[k].try_wait()? {
                bail!(
                    "server {k} ({}) exited with {status} before it was ready:\n{}",
                    self.urls[k],
                    log_tail(&self.logs[k])
                );
            }
            if http_get(addr, "/healthz").is_some_and(|(status, _)| status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "server {k} ({}) did not answer /healthz with 200 within {READY_TIMEOUT:?}:\n{}",
                    self.urls[k],
                    log_tail(&self.logs[k])
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SpawnedServers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The server's [`RECEIVED_METRIC`] (summed over its samples), `None` when it does not answer
/// or has no such metric (Tangram).
pub fn received_count(addr: SocketAddr) -> Option<u64> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        return None;
    }
    parse_metric_sum(&body, RECEIVED_METRIC)
}

/// The sum of the samples of `name` in a Prometheus text (labels ignored).
pub fn parse_metric_sum(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name 12` or `name{label="x"} 12`, not `name_other …`.
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: f64 = rest.split_whitespace().last()?.parse().ok()?;
        *found.get_or_insert(0) += v as u64;
    }
    found
}

/// `GET path` over a fresh connection: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `http://a:1,http://b:2` → the URLs, refusing an empty list.
pub fn parse_url_list(list: &str) -> Result<Vec<String>> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(anyhow!("--url is empty"));
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_metric_is_summed_and_not_confused_with_longer_names() {
        let text = "# TYPE channel_redis_messages_received_total counter\n\
                    channel_redis_messages_received_total 1234\n\
                    channel_redis_messages_received_total_other 9\n\
                    channel_slow_consumer_closes_total{shard=\"0\"} 2\n";
        assert_eq!(parse_metric_sum(text, RECEIVED_METRIC), Some(1234));
        let sharded = "channel_x{shard=\"0\"} 2\nchannel_x{shard=\"1\"} 3\n";
        assert_eq!(parse_metric_sum(sharded, "channel_x"), Some(5));
        assert_eq!(parse_metric_sum("", RECEIVED_METRIC), None);
    }

    #[test]
    fn url_lists_are_split() {
        assert_eq!(
            parse_url_list("http://a:1, http://b:2").unwrap(),
            vec!["http://a:1", "http://b:2"]
        );
        assert!(parse_url_list(" , ").is_err());
    }
}
