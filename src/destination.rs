//! Destination policy for an edge proxy: which ports a `CONNECT` may reach
//! (`--connect-ports`) and which addresses no request may reach (`--deny-destinations`).
//!
//! The deny list is checked on the address a connection is actually opened to, after
//! resolution (DNS, the cache or a plugin's resolve hook), so a name that resolves to a
//! private address (DNS rebinding) is refused like the literal address would be.
//! Addresses are compared in canonical form: `::ffff:10.0.0.1` is `10.0.0.1`.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Ports a `CONNECT` may reach, as inclusive ranges. Built from `--connect-ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRanges(Vec<(u16, u16)>);

impl PortRanges {
    /// Parses a comma- or space-separated list of ports and `low-high` ranges
    /// (`443,563,8000-8100`).
    ///
    /// # Errors
    /// A one-line reason naming the item that is not a port or a range.
    pub fn parse(list: &str) -> Result<PortRanges, String> {
        let mut ranges = Vec::new();
        for item in list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            let port = |s: &str| -> Result<u16, String> {
                match s.parse::<u16>() {
                    Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
                    _ => Err(format!(
                        "{item:?} is not a port (1-65535) or a range low-high"
                    )),
                }
            };
            let range = match item.split_once('-') {
                Some((low, high)) => (port(low)?, port(high)?),
                None => (port(item)?, port(item)?),
            };
            if range.0 > range.1 {
                return Err(format!("{item:?}: the range is empty"));
            }
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err("no port given".to_owned());
        }
        Ok(PortRanges(ranges))
    }

    /// True when `port` is in one of the ranges.
    pub fn contains(&self, port: u16) -> bool {
        self.0
            .iter()
            .any(|&(low, high)| low <= port && port <= high)
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(low, high)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

/// What `private` stands for in `--deny-destinations`: loopback, "this network" (0.0.0.0
/// reaches the local host on Linux), RFC 1918, link-local (which holds the cloud metadata
/// address 169.254.169.254), CGNAT, and on IPv6 loopback, unspecified, ULA, link-local
/// and the deprecated site-local range. IPv4-mapped IPv6 addresses are canonicalised
/// before matching, so the IPv4 ranges cover their mapped forms.
pub const PRIVATE_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
];

/// Address ranges no request may be connected to. Built from `--deny-destinations`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DenyList(Vec<IpNet>);

impl DenyList {
    /// Parses a comma- or space-separated list of CIDRs, bare addresses and the shorthand
    /// `private` (see [`PRIVATE_RANGES`]).
    ///
    /// # Errors
    /// A one-line reason naming the item that is neither.
    pub fn parse(list: &str) -> Result<DenyList, String> {
        let mut nets: Vec<IpNet> = Vec::new();
        let mut add = |net: IpNet| {
            let net = canonical_net(net.trunc());
            if !nets.contains(&net) {
                nets.push(net);
            }
        };
        for item in list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            if item.eq_ignore_ascii_case("private") {
                for range in PRIVATE_RANGES {
                    // The table above is valid CIDR, checked by a unit test.
                    if let Ok(net) = range.parse() {
                        add(net);
                    }
                }
            } else if let Ok(net) = item.parse::<IpNet>() {
                add(net);
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                add(IpNet::from(ip));
            } else {
                return Err(format!(
                    "{item:?} is not a CIDR (10.0.0.0/8, fd00::/8), an address or `private`"
                ));
            }
        }
        if nets.is_empty() {
            return Err("no range given".to_owned());
        }
        Ok(DenyList(nets))
    }

    /// True when no range is listed (the check is skipped).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The listed range that holds `ip` (in canonical form), if any.
    pub fn matching(&self, ip: IpAddr) -> Option<&IpNet> {
        let ip = ip.to_canonical();
        let found = self.0.iter().find(|net| net.contains(&ip));
        // A connection to the unspecified address (0.0.0.0, ::) reaches this host's
        // loopback: it is refused whenever loopback is.
        let loopback = match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            _ => return found,
        };
        found.or_else(|| self.0.iter().find(|net| net.contains(&loopback)))
    }
}

/// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the IPv4 range it maps.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                if let Ok(mapped) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(mapped);
                }
            }
        }
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unspecified_address_counts_as_loopback() {
        let deny = DenyList::parse("127.0.0.0/8, ::1").unwrap();
        for reached in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
            assert!(deny.matching(ip(reached)).is_some(), "{reached}");
        }
        // Only when loopback is denied.
        let deny = DenyList::parse("10.0.0.0/8").unwrap();
        assert!(deny.matching(ip("0.0.0.0")).is_none());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn port_lists_and_ranges() {
        let ports = PortRanges::parse("443, 563,8000-8100").unwrap();
        assert!(ports.contains(443) && ports.contains(563));
        assert!(ports.contains(8000) && ports.contains(8050) && ports.contains(8100));
        assert!(!ports.contains(80) && !ports.contains(8101) && !ports.contains(7999));
        assert_eq!(ports.to_string(), "443,563,8000-8100");
        for bad in ["", "0", "65536", "+443", "https", "9-1", "1-", "-5", " , "] {
            assert!(PortRanges::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn private_covers_the_ranges_an_edge_proxy_must_not_reach() {
        assert_eq!(
            DenyList::parse("private").unwrap().0.len(),
            PRIVATE_RANGES.len(),
            "every PRIVATE_RANGES entry parses"
        );
        let deny = DenyList::parse("private").unwrap();
        for denied in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
        ] {
            assert!(deny.matching(ip(denied)).is_some(), "{denied} allowed");
        }
        for allowed in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "11.0.0.1",
        ] {
            assert!(deny.matching(ip(allowed)).is_none(), "{allowed} denied");
        }
    }

    #[test]
    fn cidrs_addresses_and_mapped_ranges() {
        let deny = DenyList::parse("203.0.113.0/24 2001:db8::/32,198.51.100.7").unwrap();
        assert!(deny.matching(ip("203.0.113.9")).is_some());
        assert!(deny.matching(ip("::ffff:203.0.113.9")).is_some());
        assert!(deny.matching(ip("2001:db8::5")).is_some());
        assert!(deny.matching(ip("198.51.100.7")).is_some());
        assert!(deny.matching(ip("198.51.100.8")).is_none());
        let mapped = DenyList::parse("::ffff:192.0.2.0/120").unwrap();
        assert!(
            mapped.matching(ip("192.0.2.200")).is_some(),
            "mapped range as IPv4"
        );
        for bad in ["", "10.0.0.0/33", "privat", "example.com", "10.0.0.0/8/8"] {
            assert!(DenyList::parse(bad).is_err(), "{bad:?}");
        }
    }
}
