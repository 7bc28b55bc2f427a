//! Where the load goes: the server's and Redis's URLs as socket addresses, the source addresses
//! client sockets are spread over, and the open-file limit the clients need. Parsing and one
//! system call only; it never opens a connection.

use anyhow::{anyhow, bail, Context, Result};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Sockets a process may hold besides the clients (token pool, Redis, files).
pub const FD_MARGIN: u64 = 100;

/// `http://host:port` → (socket address, Host header).
pub fn parse_http_url(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must start with http:// (got {url})"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {hostport}"))?;
    Ok((addr, hostport))
}

/// Parses `127.0.0.2,127.0.0.3` or `127.0.0.2-127.0.0.9` (or both, comma-separated).
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("bad address {a}"))?;
            let b: std::net::Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("bad address {b}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("bad address range {part}");
            }
            out.extend((a..=b).map(|x| IpAddr::V4(x.into())));
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("bad address {part}"))?,
            );
        }
    }
    Ok(out)
}

/// The source addresses of each load process. Given addresses are dealt round-robin (a process
/// gets at least one; with fewer addresses than processes they are shared). Without any, and with
/// several processes against a loopback server, process k binds 127.0.0.(k+1): each its own.
pub fn split_source_ips(
    given: &[IpAddr],
    procs: usize,
    server: IpAddr,
) -> Result<Vec<Vec<IpAddr>>> {
    let mut out: Vec<Vec<IpAddr>> = vec![Vec::new(); procs];
    if !given.is_empty() {
        if given.len() >= procs {
            for (j, ip) in given.iter().enumerate() {
                out[j % procs].push(*ip);
            }
        } else {
            for (k, ips) in out.iter_mut().enumerate() {
                ips.push(given[k % given.len()]);
            }
        }
    } else if procs > 1 && server.is_loopback() {
        if procs > 254 {
            bail!("at most 254 load processes get their own 127.0.0.x address");
        }
        for (k, ips) in out.iter_mut().enumerate() {
            ips.push(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, k as u8 + 1)));
        }
    }
    Ok(out)
}

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return r.rlim_max;
            }
        }
        r.rlim_cur
    }
}

/// `redis://host:port[/db]` → a socket address (no password support: local test instances only).
pub fn parse_redis_url(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| anyhow!("redis url must start with redis://: {url}"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    if hostport.contains('@') {
        bail!("redis url with credentials is not supported: {url}");
    }
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    };
    hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {hostport}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_lists_and_ranges_are_expanded() {
        let v = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.0.9").unwrap();
        let s: Vec<String> = v.iter().map(|a| a.to_string()).collect();
        assert_eq!(s, vec!["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]);
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("nope").is_err());
    }

    #[test]
    fn source_ips_are_dealt_over_processes() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let ips = parse_source_ips("127.0.0.2-127.0.0.5").unwrap();
        let s = split_source_ips(&ips, 2, lo).unwrap();
        assert_eq!(s[0], vec![ips[0], ips[2]]);
        assert_eq!(s[1], vec![ips[1], ips[3]]);
        let s = split_source_ips(&ips[..1], 3, lo).unwrap();
        assert!(s.iter().all(|v| v == &vec![ips[0]]));
        let s = split_source_ips(&[], 3, lo).unwrap();
        let want: Vec<Vec<IpAddr>> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|a| vec![a.parse().unwrap()])
            .collect();
        assert_eq!(s, want);
        assert_eq!(
            split_source_ips(&[], 1, lo).unwrap(),
            vec![Vec::<IpAddr>::new()]
        );
        let remote: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(split_source_ips(&[], 2, remote)
            .unwrap()
            .iter()
            .all(Vec::is_empty));
    }

    #[test]
    fn http_urls_give_address_and_host_header() {
        let (a, h) = parse_http_url("http://127.0.0.1:4100").unwrap();
        assert_eq!(a.port(), 4100);
        assert_eq!(h, "127.0.0.1:4100");
        assert!(parse_http_url("ws://127.0.0.1:1").is_err());
    }

    #[test]
    fn redis_urls_are_parsed() {
        assert_eq!(
            parse_redis_url("redis://127.0.0.1:6390").unwrap().port(),
            6390
        );
        assert_eq!(parse_redis_url("redis://127.0.0.1").unwrap().port(), 6379);
        assert_eq!(
            parse_redis_url("redis://127.0.0.1:6390/0").unwrap().port(),
            6390
        );
        assert!(parse_redis_url("http://x").is_err());
    }
}
