//! How the soak's Redis threads reach a Redis that restarts under them: a short connect with a
//! read timeout, and whether it answers `PING`. Nothing here retries; the callers do.

use crate::resp::encode_command;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub(super) fn redis_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(s)
}

pub(super) fn redis_answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = redis_connect(addr) else {
        return false;
    };
    let mut cmd = Vec::new();
    encode_command(&mut cmd, &[b"PING"]);
    if s.write_all(&cmd).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n >= 5 && &buf[..5] == b"+PONG")
}
