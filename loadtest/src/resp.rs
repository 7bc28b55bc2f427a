//! RESP, the Redis wire format, as the load side speaks it: commands written as arrays of bulk
//! strings, one reply parser (`parse_resp`) that every Redis reader of loadtest uses, and the
//! reader of a pipeline's replies. Blocking sockets only; it never decides what a reply means.

use anyhow::{anyhow, bail, Result};
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Appends a RESP array of bulk strings (a command) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One RESP value, borrowing the input.
#[derive(Debug, PartialEq)]
pub enum Resp<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(Option<&'a [u8]>),
    Array(Vec<Resp<'a>>),
}

/// Parses one RESP value at the start of `buf`: `Ok(Some((value, bytes used)))`, `Ok(None)` if
/// incomplete.
pub fn parse_resp(buf: &[u8]) -> Result<Option<(Resp<'_>, usize)>> {
    let Some(nl) = memchr::memmem::find(buf, b"\r\n") else {
        return Ok(None);
    };
    if buf.is_empty() {
        return Ok(None);
    }
    let line = &buf[1..nl];
    let after = nl + 2;
    let int = || -> Result<i64> {
        std::str::from_utf8(line)?
            .parse::<i64>()
            .map_err(|e| anyhow!("bad RESP integer: {e}"))
    };
    match buf[0] {
        b'+' => Ok(Some((Resp::Simple(line), after))),
        b'-' => Ok(Some((Resp::Error(line), after))),
        b':' => Ok(Some((Resp::Int(int()?), after))),
        b'$' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            let end = after + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Resp::Bulk(Some(&buf[after..end])), end + 2)))
        }
        b'*' => {
            let n = int()?;
            let mut items = Vec::with_capacity(n.max(0) as usize);
            let mut pos = after;
            for _ in 0..n.max(0) {
                match parse_resp(&buf[pos..])? {
                    None => return Ok(None),
                    Some((v, used)) => {
                        items.push(v);
                        pos += used;
                    }
                }
            }
            Ok(Some((Resp::Array(items), pos)))
        }
        c => bail!("unexpected RESP type byte {c:#x}"),
    }
}

/// Reads the `n` replies of a pipeline of PUBLISH from `s` within `within`, keeping in `buf`
/// what arrives early past them (a caller that reuses its connection passes the same `buf` back;
/// it clears it on a new connection). Returns how many replies were errors; `Err` when the
/// connection fails or `within` passes first. `s` needs a read timeout for `within` to be kept.
pub fn read_replies(
    s: &mut TcpStream,
    n: usize,
    buf: &mut Vec<u8>,
    within: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + within;
    let mut chunk = vec![0u8; 64 * 1024];
    let (mut got, mut errors) = (0, 0);
    loop {
        let mut pos = 0;
        while got < n {
            match parse_resp(&buf[pos..])? {
                Some((v, used)) => {
                    pos += used;
                    got += 1;
                    if matches!(v, Resp::Error(_)) {
                        errors += 1;
                    }
                }
                None => break,
            }
        }
        buf.drain(..pos);
        if got == n {
            return Ok(errors);
        }
        if Instant::now() > deadline {
            bail!("{got} of {n} PUBLISH replies within {within:?}");
        }
        match s.read(&mut chunk) {
            Ok(0) => bail!("Redis closed the connection"),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_command_is_resp() {
        let mut v = Vec::new();
        encode_command(&mut v, &[b"PUBLISH", b"to:a:b", b"{}"]);
        assert_eq!(v, b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nto:a:b\r\n$2\r\n{}\r\n");
    }

    #[test]
    fn pmessage_is_parsed_and_partial_input_waits() {
        let msg = b"*4\r\n$8\r\npmessage\r\n$6\r\nfrom:*\r\n$10\r\nfrom:lt:0a\r\n$5\r\nhello\r\n";
        let (v, used) = parse_resp(msg).unwrap().unwrap();
        assert_eq!(used, msg.len());
        let Resp::Array(items) = v else {
            panic!("not an array")
        };
        assert_eq!(items[3], Resp::Bulk(Some(b"hello")));
        for cut in 1..msg.len() {
            assert!(parse_resp(&msg[..cut]).unwrap().is_none(), "cut {cut}");
        }
        assert_eq!(parse_resp(b":12\r\n").unwrap().unwrap().0, Resp::Int(12));
        assert_eq!(
            parse_resp(b"-ERR x\r\n").unwrap().unwrap().0,
            Resp::Error(b"ERR x")
        );
    }

    /// A loopback "Redis" that writes `replies` in the given pieces, then holds or closes.
    fn serve(pieces: Vec<&'static [u8]>, close: bool) -> TcpStream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for piece in pieces {
                std::io::Write::write_all(&mut s, piece).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            if !close {
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        s
    }

    #[test]
    fn pipeline_replies_are_counted_across_reads_and_the_rest_is_kept() {
        let mut s = serve(vec![b":1\r\n-ERR x\r", b"\n:3\r\n:4", b"\r\n"], false);
        let mut buf = Vec::new();
        assert_eq!(
            read_replies(&mut s, 3, &mut buf, Duration::from_secs(1)).unwrap(),
            1
        );
        // The fourth reply, partly read past the three asked for, waits in `buf`.
        assert_eq!(
            read_replies(&mut s, 1, &mut buf, Duration::from_secs(1)).unwrap(),
            0
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn missing_replies_fail_by_the_deadline_or_on_close() {
        let mut s = serve(vec![b":1\r\n"], false);
        let e = read_replies(&mut s, 2, &mut Vec::new(), Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.to_string(), "1 of 2 PUBLISH replies within 100ms");
        let mut s = serve(vec![b":1\r\n"], true);
        let e = read_replies(&mut s, 2, &mut Vec::new(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.to_string(), "Redis closed the connection");
    }
}
