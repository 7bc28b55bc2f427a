//! Sentinel mode's news of a failover: a thread subscribed to `+switch-master` on one sentinel
//! at a time, counting the switches of our master in [`MasterSwitches`].
//!
//! Why it is needed: after `SENTINEL FAILOVER` (or any failover where the old master stays up)
//! the old master keeps its clients and takes their commands for ~10 s until the sentinels
//! turn it into a replica; a connection that does not fail is never replaced by the reconnect
//! loop alone. The reader and the publisher compare the count with the one they connected at
//! ([`super::deployment::Connector::master_switched`]) and reconnect, which asks the
//! sentinels for the new master. The publisher and the sharded subscriber are woken through
//! the callback; the reader sleeps in its read on the old master, so the watcher publishes a
//! note on the control channel there, which wakes it.
//!
//! What it owns: the subscription to the sentinels' `+switch-master` channel, moving to the
//! next sentinel when one fails, and a catch-up on every (re)subscription (the master's address
//! is asked and compared, so a switch announced while no sentinel was heard still counts).
//! What it must never do: hold a connection to a Redis data node, or block the broker's
//! threads (it only bumps a counter and calls the wake-up it was given).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use redis::IntoConnectionInfo;

use super::admin_queries::CONTROL_CHANNEL;
use super::backoff::Backoff;

/// The sentinels' channel that announces a new master: `<name> <old ip> <old port> <new ip>
/// <new port>`.
const SWITCH_CHANNEL: &str = "+switch-master";
/// How long a read waits before the watcher checks that its sentinel still answers.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times the sentinels switched our master since start (shared, lock-free).
#[derive(Debug, Default)]
pub struct MasterSwitches {
    count: AtomicU64,
}

impl MasterSwitches {
    /// The number of switches seen so far.
    pub fn current(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }
}

/// Starts the watcher thread for `master` on `sentinels` (URLs). `on_switch` is called after
/// each switch is counted (the broker wakes its publisher with it).
pub fn spawn_switch_watcher(
    sentinels: Vec<String>,
    master: String,
    credentials: redis::RedisConnectionInfo,
    switches: Arc<MasterSwitches>,
    on_switch: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("redis-sentinel-watch".into())
        .spawn(move || watch(&sentinels, &master, &credentials, &switches, &on_switch))
        .map(|_| ())
}

fn watch(
    sentinels: &[String],
    master: &str,
    credentials: &redis::RedisConnectionInfo,
    switches: &MasterSwitches,
    on_switch: &dyn Fn(),
) {
    let mut known: Option<String> = None;
    let mut backoff = Backoff::default();
    loop {
        for sentinel in sentinels {
            match listen(
                sentinel,
                master,
                credentials,
                &mut known,
                switches,
                on_switch,
            ) {
                Ok(()) => backoff.reset(),
                Err(err) => debug!(%err, "sentinel watch: a sentinel does not answer"),
            }
        }
        std::thread::sleep(backoff.next_wait());
    }
}

/// Subscribes on one sentinel and counts switches until it fails.
fn listen(
    sentinel: &str,
    master: &str,
    credentials: &redis::RedisConnectionInfo,
    known: &mut Option<String>,
    switches: &MasterSwitches,
    on_switch: &dyn Fn(),
) -> redis::RedisResult<()> {
    let client = redis::Client::open(sentinel)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut pubsub = conn.as_pubsub();
    pubsub.subscribe(SWITCH_CHANNEL)?;
    // Catch up: a switch while no sentinel was heard is seen by comparing addresses. Asked on
    // a second connection (a subscribed one takes no ordinary commands).
    let now = master_address(&client, master)?;
    if known.as_ref().is_some_and(|k| *k != now) {
        count_switch(switches, on_switch, &now);
    }
    *known = Some(now);
    loop {
        match pubsub.get_message() {
            Ok(message) => {
                let payload: String = message.get_payload()?;
                let mut parts = payload.split(' ');
                if parts.next() != Some(master) {
                    continue;
                }
                let rest: Vec<&str> = parts.collect();
                let [old_ip, old_port, new_ip, new_port] = rest[..] else {
                    continue;
                };
                let new = format!("{new_ip}:{new_port}");
                count_switch(switches, on_switch, &new);
                note_on_old_master(old_ip, old_port, credentials);
                *known = Some(new);
            }
            Err(err) if err.is_timeout() => {
                // Quiet is normal; a sentinel that no longer answers is left for the next one.
                pubsub.ping::<redis::Value>()?;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Wakes this deployment's readers still subscribed on the old master (it stays up after a
/// `SENTINEL FAILOVER` and its subscribers hear nothing else): a note on the control channel
/// makes each of them look at the switch count and reconnect. Best effort: a dead old master
/// has already ended their connections.
fn note_on_old_master(ip: &str, port: &str, credentials: &redis::RedisConnectionInfo) {
    let Ok(port) = port.parse::<u16>() else {
        return;
    };
    let noted = redis::ConnectionAddr::Tcp(ip.to_owned(), port)
        .into_connection_info()
        .map(|info| info.set_redis_settings(credentials.clone()))
        .and_then(redis::Client::open)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(500)))
        .and_then(|mut conn| {
            redis::cmd("PUBLISH")
                .arg(CONTROL_CHANNEL)
                .arg("switch-master")
                .query::<i64>(&mut conn)
        });
    if let Err(err) = noted {
        debug!(%err, "could not wake the subscribers on the old master");
    }
}

fn count_switch(switches: &MasterSwitches, on_switch: &dyn Fn(), new: &str) {
    switches.bump();
    info!(master = %new, "the sentinels switched the master; reconnecting to it");
    on_switch();
}

/// `host:port` of `master` as this sentinel names it now.
fn master_address(client: &redis::Client, master: &str) -> redis::RedisResult<String> {
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let (host, port): (String, String) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query(&mut conn)?;
    Ok(format!("{host}:{port}"))
}
