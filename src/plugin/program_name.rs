//! `ProgramNamePlugin`: names local clients by their program in the access log
//! (`curl:58096 - GET …` instead of `127.0.0.1:58096 - GET …`).
//!
//! proxy.py runs `lsof -i -P -n` for every request; we read /proc once per client
//! connection: the client socket's inode from `/proc/net/tcp` (or `tcp6`), the process
//! holding that inode from `/proc/<pid>/fd`, its name from `/proc/<pid>/comm`. Only
//! loopback clients are looked up (a remote client's process is not on this machine),
//! and only processes this user may inspect are found. The reads are of procfs (no
//! disk) on the worker thread, once per connection and only while the access log is on.

use std::fs;
use std::net::{IpAddr, SocketAddr};

use super::{Flow, Plugin, PluginError, PluginFactory, RequestCx};
use crate::http::{RequestHead, Target};

/// proxy.py's dotted name.
pub const NAME: &str = "proxy.plugin.ProgramNamePlugin";

/// Caches the client's program name for the connection.
#[derive(Default)]
pub struct ProgramName {
    looked_up: Option<Option<String>>,
}

impl ProgramName {
    fn look_up(&mut self, cx: &RequestCx<'_>) -> Option<String> {
        self.looked_up
            .get_or_insert_with(|| {
                let logging = tracing::enabled!(target: "proxy::access", tracing::Level::INFO);
                if logging && cx.client.ip().to_canonical().is_loopback() {
                    program_of(cx.client)
                } else {
                    None
                }
            })
            .clone()
    }
}

impl Plugin for ProgramName {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Looks the client up on its connection's first request, while its socket
    /// certainly exists (by the time the exchange is logged the client may be gone).
    fn on_request(
        &mut self,
        cx: &RequestCx<'_>,
        _req: &mut RequestHead,
        _target: &mut Target,
    ) -> Result<Flow, PluginError> {
        self.look_up(cx);
        Ok(Flow::Continue)
    }

    fn client_label(&mut self, cx: &RequestCx<'_>) -> Option<String> {
        self.look_up(cx)
    }
}

/// Builds a [`ProgramName`] per connection.
pub struct ProgramNameFactory;

impl PluginFactory for ProgramNameFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(ProgramName::default())
    }
}

/// The name of the process whose socket has `client` as its local address.
pub fn program_of(client: SocketAddr) -> Option<String> {
    let table = match client {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let inode = fs::read_to_string(table)
        .ok()?
        .lines()
        .skip(1)
        .find_map(|line| socket_inode(line, client))?;
    let wanted = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let owns = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
        });
        if owns {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            return Some(comm.trim_end().to_owned());
        }
    }
    None
}

/// The inode of a `/proc/net/tcp{,6}` line whose local address is `addr`. Rows with
/// inode 0 are skipped: they are sockets no process holds any more (TIME_WAIT), and an
/// earlier connection from the same ephemeral port can still be listed that way.
fn socket_inode(line: &str, addr: SocketAddr) -> Option<u64> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = fields.get(1)?;
    let inode: u64 = fields.get(9)?.parse().ok()?;
    (inode != 0 && parse_proc_addr(local)? == addr).then_some(inode)
}

/// Parses `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6): the address is in
/// host byte order per 32-bit word, the port is plain hex.
fn parse_proc_addr(field: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = field.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::from_be);
    let ip = match ip_hex.len() {
        8 => IpAddr::from(word(ip_hex)?.to_be_bytes()).to_canonical(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let hex = ip_hex.get(i * 8..i * 8 + 8)?;
                chunk.copy_from_slice(&word(hex)?.to_be_bytes());
            }
            IpAddr::from(bytes).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_addresses() {
        // 127.0.0.1:8080, as /proc/net/tcp prints it on little-endian machines.
        let v4 = parse_proc_addr("0100007F:1F90").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(v4, "127.0.0.1:8080".parse().unwrap());
        }
        let v6 = parse_proc_addr("00000000000000000000000001000000:0050").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(v6, "[::1]:80".parse().unwrap());
        }
        assert!(parse_proc_addr("zz:1").is_none());
    }

    #[test]
    fn finds_the_inode_of_a_matching_line() {
        let line = "   1: 0100007F:1F90 0100007F:22B8 01 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0000000000000000 20 4 30 10 -1";
        if cfg!(target_endian = "little") {
            assert_eq!(
                socket_inode(line, "127.0.0.1:8080".parse().unwrap()),
                Some(424242)
            );
            assert_eq!(socket_inode(line, "127.0.0.1:8081".parse().unwrap()), None);
            let time_wait = line.replace(" 424242 ", " 0 ");
            assert_eq!(
                socket_inode(&time_wait, "127.0.0.1:8080".parse().unwrap()),
                None
            );
        }
    }

    #[test]
    fn names_this_test_process_from_its_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let name = program_of(client.local_addr().unwrap()).expect("found in /proc");
        let own = fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(name, own.trim_end());
    }
}
