//! Name resolution behind a trait, so tests (and plugins) can inject their own.
//!
//! The proxy's own resolver, [`SystemResolver`], answers as `getaddrinfo` would on a
//! `hosts: files dns` system, but with the records' TTLs:
//!
//! 1. a legacy IPv4 spelling (`127.1`, `2130706433`, `0x7f.1`) is an address, as
//!    `inet_aton` takes it;
//! 2. a name in the hosts file gets the hosts file's addresses, before any search
//!    domain is tried (glibc asks NSS `files` for the name itself first);
//! 3. otherwise hickory-resolver asks the servers in `resolv.conf`, read as glibc
//!    reads it (see `build_resolver`); the search list is walked here as glibc's
//!    `res_search` walks it, each candidate asked for A and AAAA at once, so that both
//!    families come from one name; the family this host prefers is awaited in full,
//!    the other at most 250 ms longer; the answer's TTL goes to the worker's cache;
//! 4. `getaddrinfo` answers what `nsswitch.conf` gives to other sources: everything
//!    when its `hosts:` line lacks `dns`; `.local` names when it lists an mdns source;
//!    names DNS does not know when sources other than `files` follow `dns`
//!    (myhostname, LDAP…).
//!
//! The three files are checked (one `stat` each) on every lookup, which the worker's
//! cache keeps to one per name and TTL, and read again when they change. Where
//! `resolv.conf` cannot be read or names no server, `getaddrinfo` answers (no TTLs).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::name_server::GenericConnector;
use hickory_resolver::proto::rr::Name;
use hickory_resolver::proto::runtime::{RuntimeProvider, TokioRuntimeProvider, TokioTime};
use hickory_resolver::proto::udp::DnsUdpSocket;
use hickory_resolver::proto::xfer::Protocol;

/// A boxed resolution future; runs on the worker's own thread, so it need not be `Send`.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + 'a>>;

/// A boxed [`Resolve::lookup`] future.
pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Answer>> + 'a>>;

/// Addresses, and for how long they may be used again when the resolver knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// In preference order, with the port filled in.
    pub addrs: Vec<SocketAddr>,
    /// The records' remaining time to live; `None` when the resolver does not say
    /// (the cache then keeps the answer for its default time).
    pub ttl: Option<Duration>,
}

/// Resolves a host name to socket addresses. IP literals never reach a resolver.
///
/// Errors: `io::ErrorKind::NotFound` means the name does not exist (reported as
/// `dns_error`), `io::ErrorKind::TimedOut` that no server answered (`dns_timeout`);
/// any other error is a `dns_error`. A resolver that takes longer than the connect
/// timeout is reported as `dns_timeout`.
pub trait Resolve: Send + Sync + 'static {
    /// Looks up `host` and returns addresses with `port` filled in, in preference order.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;

    /// [`Resolve::resolve`] with the answer's time to live, when the resolver knows
    /// it (the default does not).
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> LookupFuture<'a> {
        Box::pin(async move {
            Ok(Answer {
                addrs: self.resolve(host, port).await?,
                ttl: None,
            })
        })
    }
}

/// The system's resolver, read from its files (see the module's documentation); one
/// hickory resolver per worker thread, built on first use and again when a file
/// changes.
#[derive(Debug, Clone)]
pub struct SystemResolver {
    files: Arc<Files>,
}

/// Where a [`SystemResolver`] reads its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    resolv_conf: PathBuf,
    hosts: PathBuf,
    nsswitch: PathBuf,
    /// The servers' port: 53, as `resolv.conf` cannot name another.
    port: u16,
}

impl Default for SystemResolver {
    fn default() -> Self {
        SystemResolver::with_files("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf")
    }
}

impl SystemResolver {
    /// A resolver reading these files in place of `/etc`'s.
    pub fn with_files(
        resolv_conf: impl Into<PathBuf>,
        hosts: impl Into<PathBuf>,
        nsswitch: impl Into<PathBuf>,
    ) -> Self {
        SystemResolver {
            files: Arc::new(Files {
                resolv_conf: resolv_conf.into(),
                hosts: hosts.into(),
                nsswitch: nsswitch.into(),
                port: 53,
            }),
        }
    }

    /// The same files, with `resolv.conf`'s servers asked on `port` rather than 53
    /// (a test's server on loopback).
    pub fn with_port(self, port: u16) -> Self {
        SystemResolver {
            files: Arc::new(Files {
                port,
                ..Files::clone(&self.files)
            }),
        }
    }
}

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move { Ok(self.lookup(host, port).await?.addrs) })
    }

    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> LookupFuture<'a> {
        Box::pin(async move {
            if let Some(ip) = legacy_ipv4(host) {
                return Ok(Answer {
                    addrs: vec![SocketAddr::new(ip, port)],
                    ttl: None,
                });
            }
            let system = System::current(&self.files);
            if let Some(ips) = system.hosts.get(host_key(host).as_str()) {
                return Ok(Answer {
                    addrs: ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect(),
                    ttl: None,
                });
            }
            let dns = match &system.dns {
                Some(dns) if system.sources.dns => dns,
                // `hosts:` without `dns`, or no usable `resolv.conf`.
                _ => return getaddrinfo(host, port).await,
            };
            // Multicast DNS names are mdns's (nss-mdns), when nsswitch.conf has it.
            if system.sources.mdns && is_multicast_dns(host) {
                return getaddrinfo(host, port).await;
            }
            // As a DNS name, in ASCII (`my_host` is a valid DNS name, if not a valid
            // host name); one DNS cannot spell is left to getaddrinfo.
            let Ok(name) = Name::from_ascii(host) else {
                return getaddrinfo(host, port).await;
            };
            match lookup_with(dns, host, name, port, system.ipv6_first).await {
                Err(e) if e.kind() == io::ErrorKind::NotFound && system.sources.after_dns => {
                    getaddrinfo(host, port).await
                }
                answer => answer,
            }
        })
    }
}

/// A name under `.local` (RFC 6762).
fn is_multicast_dns(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() > 6
        && host
            .get(host.len() - 6..)
            .is_some_and(|end| end.eq_ignore_ascii_case(".local"))
}

/// `getaddrinfo` on tokio's blocking pool: no TTL.
async fn getaddrinfo(host: &str, port: u16) -> io::Result<Answer> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
    }
    Ok(Answer { addrs, ttl: None })
}

/// How long the family this host does not prefer is awaited once the preferred one
/// has addresses (RFC 8305 §3's resolution delay; the same quarter second as the
/// connect's attempt delay): a server that drops AAAA queries then costs this, not its
/// timeout. The preferred family is always awaited in full.
const RESOLUTION_DELAY: Duration = Duration::from_millis(250);

/// The longest an answer missing its other family (cut by [`RESOLUTION_DELAY`], or
/// failed) is kept: the next lookup asks again.
const CUT_ANSWER_TTL: Duration = Duration::from_secs(5);

/// One family's addresses and until when they may be used.
type Family = io::Result<(Vec<IpAddr>, Instant)>;

/// What one candidate name (the name itself, or the name in a search domain) gave.
enum Candidate {
    /// Addresses, the preferred family's first, and until when they may be used.
    Found(Vec<IpAddr>, Instant),
    /// NXDOMAIN, or no A and no AAAA record: the next candidate is tried.
    Missing,
    /// Another failure: a timeout ends the search (as in glibc); others (SERVFAIL,
    /// REFUSED) let it go on.
    Failed(io::Error),
}

/// One lookup through `dns`, walking the names to try as glibc's `res_nsearch` does.
/// Each name is asked for A and AAAA at once, and the first with records of either
/// family answers, so both families come from the same name.
///
/// - A name ending in a dot is tried alone.
/// - With at least `ndots` dots, the name as given is tried first; whatever its
///   failure, the search list follows.
/// - Then the name in each search domain (the root standing for the name as given): a
///   missing name or a server failure (SERVFAIL, REFUSED) goes on to the next; a
///   timeout ends the list.
/// - Then the name as given, if not tried yet (with `no-tld-query`, not for a name
///   without a dot unless nothing was searched).
///
/// The error is the first try's when the name as given came first, else a missing name
/// if any try said so, else the last failure.
async fn lookup_with(
    dns: &Dns,
    host: &str,
    name: Name,
    port: u16,
    ipv6_first: bool,
) -> io::Result<Answer> {
    let found = |ips: Vec<IpAddr>, until: Instant| Answer {
        addrs: ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        ttl: Some(until.saturating_duration_since(Instant::now())),
    };
    let mut as_is = name.clone();
    as_is.set_fqdn(true);
    if name.is_fqdn() {
        return match lookup_candidate(dns, as_is, ipv6_first).await {
            Candidate::Found(ips, until) => Ok(found(ips, until)),
            Candidate::Missing => Err(not_found()),
            Candidate::Failed(e) => Err(e),
        };
    }
    let dots = host.bytes().filter(|&b| b == b'.').count();
    let mut first_error: Option<io::Error> = None;
    let mut missing = false;
    let mut last_error: Option<io::Error> = None;
    let mut tried_as_is = false;
    if dots >= dns.ndots {
        tried_as_is = true;
        match lookup_candidate(dns, as_is.clone(), ipv6_first).await {
            Candidate::Found(ips, until) => return Ok(found(ips, until)),
            Candidate::Missing => first_error = Some(not_found()),
            Candidate::Failed(e) => first_error = Some(e),
        }
    }
    let mut searched = false;
    for domain in &dns.search {
        let candidate = match domain {
            None if tried_as_is => continue,
            None => {
                tried_as_is = true;
                as_is.clone()
            }
            Some(domain) => match name.clone().append_domain(domain) {
                Ok(mut candidate) => {
                    candidate.set_fqdn(true);
                    candidate
                }
                // Longer than a name may be: glibc skips it too.
                Err(_) => continue,
            },
        };
        searched = true;
        match lookup_candidate(dns, candidate, ipv6_first).await {
            Candidate::Found(ips, until) => return Ok(found(ips, until)),
            Candidate::Missing => missing = true,
            Candidate::Failed(e) => {
                let timed_out = e.kind() == io::ErrorKind::TimedOut;
                last_error = Some(e);
                if timed_out {
                    break;
                }
            }
        }
    }
    let tld_allowed = dots > 0 || !dns.no_tld_query || !searched;
    if !tried_as_is && tld_allowed {
        match lookup_candidate(dns, as_is, ipv6_first).await {
            Candidate::Found(ips, until) => return Ok(found(ips, until)),
            Candidate::Missing => missing = true,
            Candidate::Failed(e) => last_error = Some(e),
        }
    }
    Err(match (first_error, missing, last_error) {
        (Some(e), _, _) => e,
        (None, true, _) | (None, false, None) => not_found(),
        (None, false, Some(e)) => e,
    })
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such name")
}

/// A and AAAA (A alone with `options no-aaaa`) for one fully qualified name.
async fn lookup_candidate(dns: &Dns, name: Name, ipv6_first: bool) -> Candidate {
    let resolver = &dns.resolver;
    let v4_name = name.clone();
    let v4: Pin<Box<dyn Future<Output = Family> + '_>> = Box::pin(async move {
        let found = resolver.ipv4_lookup(v4_name).await.map_err(lookup_error)?;
        let ips = found.iter().map(|a| IpAddr::V4(a.0)).collect();
        Ok((ips, valid_until(found.as_lookup())))
    });
    if dns.no_aaaa {
        return candidate_of([Some(v4.await), None], false);
    }
    let v6: Pin<Box<dyn Future<Output = Family> + '_>> = Box::pin(async move {
        let found = resolver.ipv6_lookup(name).await.map_err(lookup_error)?;
        let ips = found.iter().map(|aaaa| IpAddr::V6(aaaa.0)).collect();
        Ok((ips, valid_until(found.as_lookup())))
    });
    let (preferred, other) = if ipv6_first { (v6, v4) } else { (v4, v6) };
    let (preferred, other) = preferred_then_briefly(preferred, other).await;
    let cut = other.is_none();
    candidate_of([Some(preferred), other], cut)
}

/// The candidate's outcome from its families' (the preferred first; `None`: not
/// asked, or cut short, which `cut` says).
fn candidate_of(families: [Option<Family>; 2], cut: bool) -> Candidate {
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut until_min: Option<Instant> = None;
    let mut failure: Option<io::Error> = None;
    for family in families.into_iter().flatten() {
        match family {
            Ok((found, until)) => {
                for ip in found {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                until_min = Some(until_min.map_or(until, |u| u.min(until)));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // A timeout says more than another failure.
            Err(e) => match &failure {
                Some(f) if f.kind() == io::ErrorKind::TimedOut => {}
                _ => failure = Some(e),
            },
        }
    }
    match until_min {
        Some(until) if !ips.is_empty() => {
            // Missing a family that was cut short or failed: ask again soon.
            let until = if cut || failure.is_some() {
                until.min(Instant::now() + CUT_ANSWER_TTL)
            } else {
                until
            };
            Candidate::Found(ips, until)
        }
        _ => failure.map_or(Candidate::Missing, Candidate::Failed),
    }
}

/// Until when an answer may be used: its records' shortest TTL (hickory's
/// `valid_until`), or now when a record's TTL has its top bit set, which RFC 2181 §8
/// says to read as 0.
fn valid_until(lookup: &hickory_resolver::lookup::Lookup) -> Instant {
    if lookup
        .records()
        .iter()
        .any(|record| record.ttl() >= 1 << 31)
    {
        return Instant::now();
    }
    lookup.valid_until()
}

/// Runs the two families' lookups together. The preferred one is awaited in full; the
/// other too, unless the preferred one has addresses, when it gets [`RESOLUTION_DELAY`]
/// more (`None`: it was cut short).
async fn preferred_then_briefly<'a>(
    mut preferred: Pin<Box<dyn Future<Output = Family> + 'a>>,
    mut other: Pin<Box<dyn Future<Output = Family> + 'a>>,
) -> (Family, Option<Family>) {
    tokio::select! {
        done = &mut preferred => {
            let has_addresses = matches!(&done, Ok((ips, _)) if !ips.is_empty());
            let other = if has_addresses {
                tokio::time::timeout(RESOLUTION_DELAY, other).await.ok()
            } else {
                Some(other.await)
            };
            (done, other)
        }
        done = &mut other => (preferred.await, Some(done)),
    }
}

/// A hickory error as the [`Resolve`] contract spells it.
fn lookup_error(e: hickory_resolver::ResolveError) -> io::Error {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    let kind = match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::Timeout) => io::ErrorKind::TimedOut,
        // NXDOMAIN, or an answer without records: the name is missing. A SERVFAIL,
        // REFUSED, NOTIMP or FORMERR comes as "no records" too, with its code.
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        }) => io::ErrorKind::NotFound,
        Some(ProtoErrorKind::NoRecordsFound { .. }) => io::ErrorKind::Other,
        _ if e.is_nx_domain() => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

/// What the files said when last read, on this thread.
struct System {
    stamps: [Option<Stamp>; 3],
    /// Lower-case name → addresses, in the file's order.
    hosts: HashMap<String, Vec<IpAddr>>,
    /// `None`: `resolv.conf` could not be used, `getaddrinfo` answers.
    dns: Option<Dns>,
    /// Whether this host has a route to the IPv6 internet.
    ipv6_first: bool,
    /// What `nsswitch.conf` lists for host names.
    sources: HostSources,
}

/// hickory-resolver over [`ConnectedUdp`].
type DnsResolver = hickory_resolver::Resolver<GenericConnector<ConnectedUdp>>;

/// tokio, with each UDP socket connected to its server (see [`ConnectedSocket`]).
#[derive(Clone, Default)]
struct ConnectedUdp(TokioRuntimeProvider);

impl RuntimeProvider for ConnectedUdp {
    type Handle = <TokioRuntimeProvider as RuntimeProvider>::Handle;
    type Timer = <TokioRuntimeProvider as RuntimeProvider>::Timer;
    type Udp = ConnectedSocket;
    type Tcp = <TokioRuntimeProvider as RuntimeProvider>::Tcp;

    fn create_handle(&self) -> Self::Handle {
        self.0.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Tcp>>>> {
        self.0.connect_tcp(server_addr, bind_addr, timeout)
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Udp>>>> {
        Box::pin(async move {
            let socket = tokio::net::UdpSocket::bind(local_addr).await?;
            socket.connect(server_addr).await?;
            Ok(ConnectedSocket(socket))
        })
    }
}

/// A UDP socket connected to its DNS server, so that the kernel records the server's
/// ICMP port unreachable on it, and a receive that would wait reports that error
/// instead: the query fails and the next server is asked, as glibc does. hickory's own
/// sockets are unconnected, and every lookup waited out a stopped first server's
/// timeout. (On loopback the refusal is there as the query is sent; one from a remote
/// host that arrives later wakes nothing, as tokio does not wake a reader for an error
/// alone, and is still waited out.) Replies from another address than the server's,
/// which hickory ignores anyway, are now dropped by the kernel.
struct ConnectedSocket(tokio::net::UdpSocket);

impl DnsUdpSocket for ConnectedSocket {
    type Time = TokioTime;

    fn poll_recv_from(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<(usize, SocketAddr)>> {
        let polled = DnsUdpSocket::poll_recv_from(&self.0, cx, buf);
        if polled.is_pending() {
            if let Ok(Some(e)) = self.0.take_error() {
                return std::task::Poll::Ready(Err(e));
            }
        }
        polled
    }

    fn poll_send_to(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> std::task::Poll<io::Result<usize>> {
        DnsUdpSocket::poll_send_to(&self.0, cx, buf, target)
    }
}

/// The resolver built from `resolv.conf`, and what it asks for.
struct Dns {
    /// Asks for fully qualified names only: the search list is walked here.
    resolver: DnsResolver,
    /// The last `search` or `domain` line's domains (else the host name's domain);
    /// `None` for the root, which stands for the name as given.
    search: Vec<Option<Name>>,
    /// `options ndots` (at most 15, as in glibc).
    ndots: usize,
    /// `options no-tld-query`: a name without a dot is only tried in search domains.
    no_tld_query: bool,
    /// `options no-aaaa`: IPv4 addresses only.
    no_aaaa: bool,
}

/// The `hosts:` line of `nsswitch.conf`, as far as it matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostSources {
    /// `dns` is listed (or there is no `hosts:` line: glibc then asks DNS).
    dns: bool,
    /// Sources other than `files` come after `dns` (myhostname, LDAP…): a name DNS does
    /// not know is theirs to answer.
    after_dns: bool,
    /// An mdns source is listed (nss-mdns): `.local` names are its.
    mdns: bool,
}

/// A file's identity and version: a change in any part means read it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

thread_local! {
    /// This thread's view of each set of files (in practice one: `/etc`'s).
    static SYSTEMS: RefCell<Vec<(Arc<Files>, Rc<System>)>> = const { RefCell::new(Vec::new()) };
}

impl System {
    /// This thread's view of `files`, read again if any of them changed.
    fn current(files: &Arc<Files>) -> Rc<System> {
        let stamps = [
            stamp(&files.resolv_conf),
            stamp(&files.hosts),
            stamp(&files.nsswitch),
        ];
        SYSTEMS.with(|systems| {
            let mut systems = systems.borrow_mut();
            let known = systems.iter().position(|(f, _)| **f == **files);
            if let Some(i) = known {
                if systems[i].1.stamps == stamps {
                    return Rc::clone(&systems[i].1);
                }
                tracing::info!(
                    resolv_conf = %files.resolv_conf.display(),
                    hosts = %files.hosts.display(),
                    "DNS configuration changed; reading it again"
                );
            }
            let system = Rc::new(System::read(files, stamps));
            match known {
                Some(i) => systems[i].1 = Rc::clone(&system),
                None => systems.push((Arc::clone(files), Rc::clone(&system))),
            }
            system
        })
    }

    fn read(files: &Files, stamps: [Option<Stamp>; 3]) -> System {
        let hosts = std::fs::read_to_string(&files.hosts)
            .map(|text| parse_hosts(&text))
            .unwrap_or_default();
        let sources = std::fs::read_to_string(&files.nsswitch)
            .map(|text| host_sources(&text))
            .unwrap_or(HostSources {
                dns: true,
                after_dns: false,
                mdns: false,
            });
        let dns = match build_resolver(files) {
            Ok(dns) => Some(dns),
            Err(e) => {
                tracing::warn!(
                    resolv_conf = %files.resolv_conf.display(),
                    error = %e,
                    "cannot use the DNS configuration; names go to getaddrinfo (no TTLs)"
                );
                None
            }
        };
        System {
            stamps,
            hosts,
            dns,
            ipv6_first: has_ipv6_route(),
            sources,
        }
    }
}

/// hickory-resolver as glibc reads `resolv.conf`: its servers asked one at a time in
/// their order (`options rotate`: in turn), the first answer taken (NXDOMAIN included),
/// the last `search` or `domain` line (else the host name's domain) as the search list,
/// `ndots`, `timeout`, `attempts` (tries per server; hickory counts retries), `edns0`,
/// `use-vc` (TCP only) and `no-aaaa`; options it does not know are ignored, with a
/// warning. No cache of its own (the worker's keeps answers for their TTL and forgets a
/// name whose addresses all failed) and no hosts file (read here, before any search
/// domain).
fn build_resolver(files: &Files) -> io::Result<Dns> {
    let text = std::fs::read(&files.resolv_conf)?;
    let (conf, errors) = resolv_conf::Config::parse_with_errors(&text);
    if let Some(first) = errors.first() {
        tracing::warn!(
            resolv_conf = %files.resolv_conf.display(),
            ignored = errors.len(),
            first = %first,
            "parts of the DNS configuration are not understood; the rest is used"
        );
    }
    if conf.nameservers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no nameserver line",
        ));
    }
    let protocols: &[Protocol] = if conf.use_vc {
        &[Protocol::Tcp]
    } else {
        &[Protocol::Udp, Protocol::Tcp]
    };
    let mut servers = Vec::new();
    // glibc uses the first three (MAXNS).
    for server in conf.nameservers.iter().take(3) {
        let ip = match server {
            resolv_conf::ScopedIp::V4(ip) => SocketAddr::new(IpAddr::V4(*ip), files.port),
            resolv_conf::ScopedIp::V6(ip, scope) => {
                let scope = scope.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
                SocketAddr::V6(std::net::SocketAddrV6::new(*ip, files.port, 0, scope))
            }
        };
        for &protocol in protocols {
            let mut config = NameServerConfig::new(ip, protocol);
            // glibc takes the first server's NXDOMAIN as the answer.
            config.trust_negative_responses = true;
            servers.push(config);
        }
    }
    let explicit: Vec<String> = conf.get_last_search_or_domain().cloned().collect();
    let search: Vec<Option<Name>> = if explicit.is_empty() && conf.get_domain().is_none() {
        conf.get_system_domain().into_iter().collect()
    } else {
        explicit
    }
    .iter()
    .filter(|domain| domain.as_str() != "--")
    .filter_map(|domain| match domain.as_str() {
        // The root (`search .`, systemd-resolved's stub): the name as given, in its place.
        "." => Some(None),
        _ => Name::from_ascii(domain).ok().map(Some),
    })
    .collect();
    let mut options = ResolverOpts::default();
    // Names reach hickory fully qualified; the search list is walked in `lookup_with`.
    options.ndots = 0;
    // glibc's bounds: timeout 1–30 s, attempts 1–5.
    options.timeout = Duration::from_secs(u64::from(conf.timeout.clamp(1, 30)));
    options.attempts = (conf.attempts.clamp(1, 5) - 1) as usize;
    options.edns0 = conf.edns0;
    options.num_concurrent_reqs = 1;
    options.server_ordering_strategy = if conf.rotate {
        ServerOrderingStrategy::RoundRobin
    } else {
        ServerOrderingStrategy::UserProvidedOrder
    };
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    let config = ResolverConfig::from_parts(None, Vec::new(), servers);
    Ok(Dns {
        resolver: DnsResolver::builder_with_config(
            config,
            GenericConnector::new(ConnectedUdp::default()),
        )
        .with_options(options)
        .build(),
        search,
        ndots: conf.ndots.min(15) as usize,
        no_tld_query: conf.no_tld_query,
        no_aaaa: conf.no_aaaa,
    })
}

/// The key a name has in the hosts map: lower case, without a final dot.
fn host_key(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// `/etc/hosts`: per line an address, then names and aliases; `#` starts a comment.
/// A line whose address does not parse (a scoped `fe80::1%eth0`) is skipped.
fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut hosts: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_ascii_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in fields {
            let ips = hosts.entry(host_key(name)).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    hosts
}

/// The sources the `hosts:` line of `nsswitch.conf` lists (actions in brackets
/// aside); without such a line, glibc's default (`dns`, then `files`).
fn host_sources(nsswitch: &str) -> HostSources {
    let Some(line) = nsswitch
        .lines()
        .filter_map(|line| line.split('#').next()?.trim().strip_prefix("hosts:"))
        // glibc keeps the first line for a database.
        .next()
    else {
        return HostSources {
            dns: true,
            after_dns: false,
            mdns: false,
        };
    };
    // Sources, each with the actions in brackets that follow it.
    let mut sources: Vec<(&str, String)> = Vec::new();
    let mut in_action = false;
    for word in line.split_ascii_whitespace() {
        if in_action || word.starts_with('[') {
            in_action = !word.ends_with(']');
            if let Some((_, actions)) = sources.last_mut() {
                actions.push(' ');
                actions.push_str(&word.to_ascii_uppercase());
            }
        } else {
            sources.push((word, String::new()));
        }
    }
    let dns_at = sources.iter().position(|(s, _)| *s == "dns");
    HostSources {
        dns: dns_at.is_some(),
        // `dns [NOTFOUND=return]` keeps a name DNS does not know from what follows.
        after_dns: dns_at.is_some_and(|at| {
            !sources[at].1.contains("NOTFOUND=RETURN")
                && sources[at + 1..].iter().any(|(s, _)| *s != "files")
        }),
        mdns: sources.iter().any(|(s, _)| s.starts_with("mdns")),
    }
}

/// Whether this host can reach the IPv6 internet: a route to a global address from a
/// global source (a UDP connect sends nothing). glibc's RFC 6724 sort asks the same: a
/// unique-local (`fc00::/7`), 6to4 (`2002::/16`) or Teredo (`2001::/32`) source does
/// not put IPv6 first.
fn has_ipv6_route() -> bool {
    let Ok(socket) = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)) else {
        return false;
    };
    let probe = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        9,
    );
    socket.connect(probe).is_ok()
        && socket.local_addr().is_ok_and(|local| match local.ip() {
            IpAddr::V6(ip) => is_global_source(ip),
            IpAddr::V4(_) => false,
        })
}

/// An IPv6 source address from which glibc would prefer IPv6 for global destinations.
fn is_global_source(ip: Ipv6Addr) -> bool {
    let [first, second, ..] = ip.segments();
    !ip.is_loopback()
        && !ip.is_unspecified()
        && first & 0xffc0 != 0xfe80
        && first & 0xfe00 != 0xfc00
        && first != 0x2002
        && !(first == 0x2001 && second == 0)
}

/// An IPv4 address in one of the legacy spellings `inet_aton` accepts (and browsers
/// normalise): fewer than four parts (`127.1`), a single number (`2130706433`), octal
/// or hex parts (`0x7f.1`). getaddrinfo takes them as addresses; a DNS resolver would
/// look them up as names.
fn legacy_ipv4(host: &str) -> Option<IpAddr> {
    let mut parts = [0u32; 4];
    let mut count = 0;
    for part in host.split('.') {
        if count == 4 {
            return None;
        }
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (part, 10)
            };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        parts[count] = u32::from_str_radix(digits, radix).ok()?;
        count += 1;
    }
    let (last, head) = parts[..count].split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    // The last part fills the bytes the others left: 32, 24, 16 or 8 bits.
    let room = 8 * (4 - head.len() as u32);
    if room < 32 && *last >= 1 << room {
        return None;
    }
    let value = head
        .iter()
        .zip([24u32, 16, 8])
        .fold(*last, |acc, (&n, shift)| acc | n << shift);
    Some(IpAddr::V4(Ipv4Addr::from(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DNS server on loopback. `found.test`: A 10.1.2.3 (TTL 7) and AAAA
    /// 2001:db8::5 (TTL 9); `myhost.corp.test`: A 10.9.9.9; `myhost.other.test`: A
    /// 10.7.7.7; `my_host.test`: A 10.1.2.5; `huge-ttl.test`: A 10.1.2.6 with a TTL whose
    /// top bit is set; `noaaaa.test`: A 10.1.2.4 and no reply to AAAA; `h.a.test`: A
    /// 10.0.0.1 only; `h.b.test`: AAAA 2001:db8::66 only; `noa.test`: AAAA 2001:db8::66
    /// and no reply to A; `slow-a.test` and
    /// `slow-aaaa.test`: A 10.0.0.2 and AAAA 2001:db8::66, the named family 400 ms late;
    /// `www.x.a.test` A 10.0.0.5, `api.example.test` A 10.0.0.6, `one` A 10.0.0.7,
    /// `one.s.test` A 10.0.0.8; `sf.test`: SERVFAIL; `silent.test`, `www.x` and
    /// `api.example.test.s.test`: no reply at all; any other name: NXDOMAIN.
    async fn dns_server() -> SocketAddr {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let query = &buf[..n];
                // The question: labels from byte 12 to the root, then type and class.
                let mut end = 12;
                let mut labels = Vec::new();
                while query[end] != 0 {
                    let len = usize::from(query[end]);
                    labels
                        .push(String::from_utf8_lossy(&query[end + 1..end + 1 + len]).into_owned());
                    end += 1 + len;
                }
                let question = &query[12..end + 5];
                let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
                let name = labels.join(".").to_ascii_lowercase();
                let record: Option<(u32, &[u8])> = match (name.as_str(), qtype) {
                    ("silent.test" | "www.x" | "api.example.test.s.test", _) => continue,
                    ("www.x.a.test", 1) => Some((60, &[10, 0, 0, 5])),
                    ("api.example.test", 1) => Some((60, &[10, 0, 0, 6])),
                    ("one", 1) => Some((60, &[10, 0, 0, 7])),
                    ("one.s.test", 1) => Some((60, &[10, 0, 0, 8])),
                    ("www.x.a.test" | "api.example.test" | "one" | "one.s.test", _) => None,
                    ("sf.test", _) => {
                        let mut out = query[..2].to_vec();
                        out.extend_from_slice(&[0x81, 0x82, 0, 1, 0, 0, 0, 0, 0, 0]);
                        out.extend_from_slice(question);
                        let _ = socket.send_to(&out, from).await;
                        continue;
                    }
                    ("found.test", 1) => Some((7, &[10, 1, 2, 3])),
                    ("found.test", 28) => {
                        Some((9, &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]))
                    }
                    ("myhost.corp.test", 1) => Some((60, &[10, 9, 9, 9])),
                    ("noaaaa.test", 1) => Some((60, &[10, 1, 2, 4])),
                    ("noaaaa.test", _) => continue,
                    ("noa.test", 28) => Some((60, &V6_66)),
                    ("noa.test", _) => continue,
                    ("my_host.test", 1) => Some((60, &[10, 1, 2, 5])),
                    ("huge-ttl.test", 1) => Some((0x8000_0001, &[10, 1, 2, 6])),
                    ("myhost.other.test", 1) => Some((60, &[10, 7, 7, 7])),
                    ("h.a.test", 1) => Some((60, &[10, 0, 0, 1])),
                    ("h.b.test", 28) => Some((60, &V6_66)),
                    ("slow-a.test", 1) | ("slow-aaaa.test", 1) => Some((60, &[10, 0, 0, 2])),
                    ("slow-a.test", 28) | ("slow-aaaa.test", 28) => Some((60, &V6_66)),
                    (
                        "my_host.test" | "huge-ttl.test" | "myhost.other.test" | "h.a.test"
                        | "h.b.test",
                        _,
                    ) => None,
                    ("found.test" | "myhost.corp.test", _) => None,
                    _ => {
                        let mut out = query[..2].to_vec();
                        out.extend_from_slice(&[0x81, 0x83, 0, 1, 0, 0, 0, 0, 0, 0]);
                        out.extend_from_slice(question);
                        let _ = socket.send_to(&out, from).await;
                        continue;
                    }
                };
                let mut out = query[..2].to_vec();
                out.extend_from_slice(&[
                    0x81,
                    0x80,
                    0,
                    1,
                    0,
                    u8::from(record.is_some()),
                    0,
                    0,
                    0,
                    0,
                ]);
                out.extend_from_slice(question);
                if let Some((ttl, data)) = record {
                    out.extend_from_slice(&[0xc0, 0x0c]);
                    out.extend_from_slice(&qtype.to_be_bytes());
                    out.extend_from_slice(&[0, 1]);
                    out.extend_from_slice(&ttl.to_be_bytes());
                    out.extend_from_slice(&[0, data.len() as u8]);
                    out.extend_from_slice(data);
                }
                // One family of `slow-*.test` answers 400 ms late.
                let late = matches!(
                    (name.as_str(), qtype),
                    ("slow-a.test", 1) | ("slow-aaaa.test", 28)
                );
                if late {
                    let socket = Arc::clone(&socket);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        let _ = socket.send_to(&out, from).await;
                    });
                } else {
                    let _ = socket.send_to(&out, from).await;
                }
            }
        });
        addr
    }

    /// 2001:db8::66.
    const V6_66: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x66];

    /// A directory of its own holding `resolv.conf`, `hosts` and `nsswitch.conf`.
    struct Etc(PathBuf);

    impl Etc {
        fn new(test: &str, resolv_conf: &str, hosts: &str) -> Etc {
            let dir = std::env::temp_dir().join(format!("proxy-dns-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let etc = Etc(dir);
            etc.write("resolv.conf", resolv_conf);
            etc.write("hosts", hosts);
            etc.write("nsswitch.conf", "hosts: files dns\n");
            etc
        }

        /// Replaces a file as editors and tools do: a new file renamed over the old.
        fn write(&self, name: &str, text: &str) {
            let fresh = self.0.join(format!("{name}.new"));
            std::fs::write(&fresh, text).unwrap();
            std::fs::rename(&fresh, self.0.join(name)).unwrap();
        }

        fn resolver(&self, server: SocketAddr) -> SystemResolver {
            SystemResolver::with_files(
                self.0.join("resolv.conf"),
                self.0.join("hosts"),
                self.0.join("nsswitch.conf"),
            )
            .with_port(server.port())
        }
    }

    impl Drop for Etc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ips(answer: &Answer) -> Vec<String> {
        answer.addrs.iter().map(|a| a.ip().to_string()).collect()
    }

    #[tokio::test]
    async fn dns_answers_carry_both_families_and_the_shortest_ttl() {
        let server = dns_server().await;
        let etc = Etc::new(
            "answers",
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            "",
        );
        let resolver = etc.resolver(server);
        let answer = resolver.lookup("found.test", 443).await.unwrap();
        let mut expected = vec!["10.1.2.3".to_string(), "2001:db8::5".to_string()];
        if has_ipv6_route() {
            expected.reverse();
        }
        assert_eq!(
            ips(&answer),
            expected,
            "A and AAAA, the reachable family first"
        );
        assert!(answer.addrs.iter().all(|a| a.port() == 443));
        let ttl = answer.ttl.unwrap();
        assert!(
            ttl <= Duration::from_secs(7) && ttl > Duration::from_secs(5),
            "{ttl:?}"
        );

        let missing = resolver.lookup("missing.test", 80).await.unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
        let silent = resolver.lookup("silent.test", 80).await.unwrap_err();
        assert_eq!(silent.kind(), io::ErrorKind::TimedOut, "{silent}");

        let legacy = resolver.lookup("127.1", 80).await.unwrap();
        assert_eq!(
            ips(&legacy),
            ["127.0.0.1"],
            "inet_aton's spelling, no query"
        );
    }

    #[tokio::test]
    async fn a_server_that_drops_the_other_familys_queries_costs_the_resolution_delay() {
        let server = dns_server().await;
        // The dropped query would wait 30 s for its answer, longer than the test waits.
        let etc = Etc::new(
            "noaaaa",
            "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n",
            "",
        );
        let resolver = etc.resolver(server);
        // The family this host does not prefer is the one dropped.
        let (name, expected) = if has_ipv6_route() {
            ("noa.test", "2001:db8::66")
        } else {
            ("noaaaa.test", "10.1.2.4")
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), resolver.lookup(name, 80))
            .await
            .expect("the preferred family's answer, without waiting for the other's timeout")
            .unwrap();
        assert_eq!(ips(&answer), [expected]);
        assert!(
            answer.ttl.unwrap() <= CUT_ANSWER_TTL,
            "a cut answer is kept briefly"
        );
    }

    #[tokio::test]
    async fn names_are_sent_as_dns_spells_them_and_odd_ttls_are_not_kept() {
        let server = dns_server().await;
        let etc = Etc::new(
            "names",
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            "",
        );
        let resolver = etc.resolver(server);
        // An underscore is valid in a DNS name (not in a host name): getaddrinfo asks.
        let underscore = resolver.lookup("MY_HOST.test", 80).await.unwrap();
        assert_eq!(ips(&underscore), ["10.1.2.5"]);
        // RFC 2181 §8: a TTL with its top bit set counts as 0.
        let huge = resolver.lookup("huge-ttl.test", 80).await.unwrap();
        assert_eq!(ips(&huge), ["10.1.2.6"]);
        assert_eq!(huge.ttl, Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn resolv_conf_is_read_as_glibc_reads_it() {
        let server = dns_server().await;
        // The last of `domain` and `search` wins; `search .` adds nothing; an option
        // glibc knows but this parser does not is skipped, not fatal.
        let etc = Etc::new(
            "glibc",
            "nameserver 127.0.0.1\ndomain other.test\nsearch . corp.test\n\
             options timeout:1 attempts:1 no-aaaa strict-error\n",
            "",
        );
        let resolver = etc.resolver(server);
        let searched = resolver.lookup("myhost", 80).await.unwrap();
        assert_eq!(ips(&searched), ["10.9.9.9"], "corp.test, not other.test");
        assert!(
            searched.ttl.is_some(),
            "answered by DNS, not by getaddrinfo"
        );
        let v4_only = resolver.lookup("found.test", 80).await.unwrap();
        assert_eq!(ips(&v4_only), ["10.1.2.3"], "options no-aaaa");

        etc.write(
            "resolv.conf",
            "nameserver 127.0.0.1\nsearch corp.test\ndomain other.test\n",
        );
        let domain = resolver.lookup("myhost", 80).await.unwrap();
        assert_eq!(ips(&domain), ["10.7.7.7"], "the domain line came last");

        // `hosts: files` without `dns`: DNS is not asked (getaddrinfo finds nothing).
        etc.write("nsswitch.conf", "hosts: files\n");
        let not_asked = resolver.lookup("myhost", 80).await;
        assert!(not_asked.is_err(), "{not_asked:?}");
    }

    #[tokio::test]
    async fn both_families_come_from_the_first_search_candidate_with_records() {
        let server = dns_server().await;
        let etc = Etc::new(
            "candidates",
            "nameserver 127.0.0.1\nsearch a.test b.test\noptions timeout:1 attempts:1\n",
            "",
        );
        let resolver = etc.resolver(server);
        // h.a.test has only an A record, h.b.test only an AAAA one: another host.
        let answer = resolver.lookup("h", 80).await.unwrap();
        assert_eq!(ips(&answer), ["10.0.0.1"]);
    }

    #[tokio::test]
    async fn the_search_list_is_walked_as_glibc_walks_it() {
        let server = dns_server().await;
        let etc = Etc::new(
            "walk",
            "nameserver 127.0.0.1\nsearch a.test\noptions timeout:1 attempts:1\n",
            "",
        );
        let resolver = etc.resolver(server);
        // The name as given (enough dots) times out: the search list still follows.
        let after_timeout = resolver.lookup("www.x", 80).await.unwrap();
        assert_eq!(ips(&after_timeout), ["10.0.0.5"]);

        // A search candidate times out: the list ends, the name as given is still tried.
        etc.write(
            "resolv.conf",
            "nameserver 127.0.0.1\nsearch s.test\noptions ndots:5 timeout:1 attempts:1\n",
        );
        let as_given = resolver.lookup("api.example.test", 80).await.unwrap();
        assert_eq!(ips(&as_given), ["10.0.0.6"]);

        // The root in the search list is the name as given, in its place.
        etc.write(
            "resolv.conf",
            "nameserver 127.0.0.1\nsearch a.test . s.test\noptions timeout:1 attempts:1\n",
        );
        let root = resolver.lookup("one", 80).await.unwrap();
        assert_eq!(ips(&root), ["10.0.0.7"], "one. before one.s.test");

        // A server failure is not a missing name.
        let servfail = resolver.lookup("sf.test", 80).await.unwrap_err();
        assert_eq!(servfail.kind(), io::ErrorKind::Other, "{servfail}");
    }

    #[tokio::test]
    async fn the_preferred_family_is_awaited_in_full() {
        let server = dns_server().await;
        let etc = Etc::new(
            "preferred",
            "nameserver 127.0.0.1\noptions timeout:5 attempts:1\n",
            "",
        );
        let resolver = etc.resolver(server);
        // The family this host prefers answers 400 ms after the other one.
        let (name, expected) = if has_ipv6_route() {
            ("slow-aaaa.test", ["2001:db8::66", "10.0.0.2"])
        } else {
            ("slow-a.test", ["10.0.0.2", "2001:db8::66"])
        };
        let answer = resolver.lookup(name, 80).await.unwrap();
        assert_eq!(ips(&answer), expected);
    }

    #[tokio::test]
    async fn a_local_nameserver_that_is_not_there_is_passed_over_at_once() {
        let server = dns_server().await;
        // Nothing listens on 127.0.0.3 at the server's port (a stopped local cache): the
        // kernel answers with a port unreachable. The timeout is longer than the test
        // waits.
        let etc = Etc::new(
            "refused",
            "nameserver 127.0.0.3\nnameserver 127.0.0.1\noptions timeout:30 attempts:1\n",
            "",
        );
        let resolver = etc.resolver(server);
        for _ in 0..2 {
            let answer =
                tokio::time::timeout(Duration::from_secs(10), resolver.lookup("found.test", 80))
                    .await
                    .expect("the second server's answer, without the first one's timeout")
                    .unwrap();
            assert!(ips(&answer).contains(&"10.1.2.3".to_string()), "{answer:?}");
        }
    }

    #[tokio::test]
    async fn the_hosts_file_comes_before_search_domains_and_is_read_again_when_it_changes() {
        let server = dns_server().await;
        let etc = Etc::new(
            "hosts",
            "nameserver 127.0.0.1\nsearch corp.test\noptions timeout:1 attempts:1\n",
            "",
        );
        let resolver = etc.resolver(server);
        let via_search = resolver.lookup("myhost", 80).await.unwrap();
        assert_eq!(ips(&via_search), ["10.9.9.9"], "DNS finds myhost.corp.test");

        etc.write("hosts", "127.0.0.1 localhost\n127.0.0.7 MyHost\n");
        let from_hosts = resolver.lookup("myhost", 80).await.unwrap();
        assert_eq!(
            ips(&from_hosts),
            ["127.0.0.7"],
            "the hosts file, before any search domain"
        );
        assert_eq!(from_hosts.ttl, None);

        etc.write("hosts", "127.0.0.1 localhost\n");
        let again = resolver.lookup("myhost", 80).await.unwrap();
        assert_eq!(ips(&again), ["10.9.9.9"], "the entry's removal is seen");

        // A resolv.conf that names no server: getaddrinfo answers.
        etc.write("resolv.conf", "search corp.test\n");
        let system = resolver.lookup("localhost", 80).await.unwrap();
        assert!(
            system.addrs.iter().all(|a| a.ip().is_loopback()),
            "{system:?}"
        );
        assert_eq!(system.ttl, None, "getaddrinfo gives no TTL");
    }

    #[test]
    fn legacy_ipv4_spellings_are_addresses() {
        let v4 = |s: &str| legacy_ipv4(s).map(|ip| ip.to_string());
        assert_eq!(v4("127.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("2130706433").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("0x7f.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("0177.0.0.01").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("10.1.258").as_deref(), Some("10.1.1.2"));
        assert_eq!(v4("1.2.3.4").as_deref(), Some("1.2.3.4"));
        for name in [
            "example.com",
            "1.2.3.4.5",
            "256.1",
            "1.2.3.256",
            "1..2",
            "",
            "08",
            "0x",
            "4294967296",
            "1.2.16777216",
            "dead.beef",
            "cafe",
        ] {
            assert_eq!(v4(name), None, "{name}");
        }
    }

    #[test]
    fn hosts_file_names_are_case_blind_and_keep_the_files_order() {
        let hosts = parse_hosts(
            "# comment\n127.0.0.1 localhost Local.Test # trailing\n\
             ::1 localhost ip6-localhost\nfe80::1%eth0 scoped\n\n\
             10.0.0.1 local.test\nnot-an-address name\n127.0.0.1 localhost\n",
        );
        let ips = |name: &str| {
            hosts
                .get(name)
                .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(ips("localhost").unwrap(), ["127.0.0.1", "::1"]);
        assert_eq!(ips("local.test").unwrap(), ["127.0.0.1", "10.0.0.1"]);
        assert_eq!(ips("ip6-localhost").unwrap(), ["::1"]);
        assert_eq!(ips("scoped"), None);
        assert_eq!(ips("name"), None);
        assert_eq!(host_key("Local.Test."), "local.test");
    }

    #[test]
    fn nsswitch_host_sources() {
        let sources = |text: &str| {
            let s = host_sources(text);
            (s.dns, s.after_dns, s.mdns)
        };
        assert_eq!(
            sources("passwd: files\nhosts:          files dns\n"),
            (true, false, false)
        );
        assert_eq!(
            sources("hosts: files [NOTFOUND=return] dns\n"),
            (true, false, false)
        );
        assert_eq!(
            sources("# hosts: files mdns4\n"),
            (true, false, false),
            "no hosts line"
        );
        assert_eq!(sources(""), (true, false, false));
        assert_eq!(sources("hosts: files\n"), (false, false, false));
        assert_eq!(sources("hosts: dns files\n"), (true, false, false));
        // Ubuntu's: mdns answers .local, nothing answers after DNS.
        assert_eq!(
            sources("hosts: files mdns4_minimal [NOTFOUND=return] dns\n"),
            (true, false, true)
        );
        assert_eq!(
            sources("hosts: files resolve [!UNAVAIL=return UNAVAIL=continue] dns myhostname\n"),
            (true, true, false)
        );
        assert_eq!(
            sources("hosts: files dns [NOTFOUND=return] myhostname\n"),
            (true, false, false)
        );
    }

    #[test]
    fn global_ipv6_sources_and_multicast_names() {
        let global = |s: &str| is_global_source(s.parse().unwrap());
        assert!(global("2a00:1450::1"));
        assert!(
            global("2001:db8::1"),
            "a documentation prefix is still global-scope"
        );
        for local in [
            "::1",
            "::",
            "fe80::1",
            "fd00::2",
            "fc00::1",
            "2002:c000:204::1",
            "2001:0:1::1",
        ] {
            assert!(!global(local), "{local}");
        }
        assert!(is_multicast_dns("printer.local"));
        assert!(is_multicast_dns("Printer.LOCAL."));
        assert!(!is_multicast_dns(".local"));
        assert!(!is_multicast_dns("local"));
        assert!(!is_multicast_dns("example.localhost"));
    }
}
