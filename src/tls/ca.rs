//! The interception CA: proxy.py's three files (`--ca-key-file`, `--ca-cert-file`,
//! `--ca-signing-key-file`), a leaf certificate minted per host, and the caches that keep
//! leaves in memory and, with `--ca-cert-dir`, on disk as `<host>.pem`.
//!
//! As in proxy.py, every leaf carries one key, the signing key; the CA key only signs. A leaf
//! names its host in subjectAltName (a DNS name, or an IP address for an IP literal), copies
//! the origin server's subject when it is known, is valid from an hour ago for 397 days (never
//! past the CA's own end), and is good for serverAuth only. Minting an ECDSA P-256 leaf is a
//! fraction of a millisecond of CPU, so a first-seen host waits for it inline; callers asking
//! for the same host at the same time, from any thread, wait for one mint instead of each
//! making their own.
//!
//! Every leaf this CA hands out, minted or read from disk, has passed the same check a client
//! makes (webpki, with the CA as the only root): at load for a probe leaf, and for each file
//! read from the disk cache. A CA whose subject or key identifier rcgen cannot reproduce
//! therefore fails at start-up rather than in every client's handshake.
//!
//! `--ca-generate DIR` writes a new CA with [`generate`] and prints [`instructions`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SigningKey};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// How long a leaf lives: the most browsers accept for a certificate (Apple's limit is 398 days).
const LEAF_LIFETIME: time::Duration = time::Duration::days(397);
/// How far a leaf's and a generated CA's validity start before now, for clients whose clock lags.
const BACKDATE: time::Duration = time::Duration::hours(1);
/// How long a generated CA lives.
const CA_LIFETIME: time::Duration = time::Duration::days(3650);
/// A cached file must stay valid at least this long to be used; otherwise it is minted again.
const DISK_MARGIN: Duration = Duration::from_secs(24 * 3600);
/// The host of the leaf minted and verified once at load, never cached.
const PROBE_HOST: &str = "proxy-ca-check.invalid";
/// The longest common name X.509 allows (ub-common-name); longer hosts are named by SAN only.
const MAX_CN: usize = 64;

/// The three files proxy.py takes.
#[derive(Clone, Copy, Debug)]
pub struct CaFiles<'a> {
    /// The CA's private key (`--ca-key-file`): signs every leaf.
    pub key: &'a Path,
    /// The CA certificate (`--ca-cert-file`): the issuer of every leaf, which clients trust.
    pub cert: &'a Path,
    /// The leaves' private key (`--ca-signing-key-file`): one key for every host, as in proxy.py.
    pub signing_key: &'a Path,
}

/// A memory-cache entry: filled once by whichever caller gets there first.
type Slot = Arc<OnceLock<Result<Arc<CertifiedKey>, String>>>;

/// The memory cache: leaves by host, and the hosts in insertion order for eviction.
#[derive(Default)]
struct Cache {
    slots: HashMap<String, Slot>,
    order: VecDeque<String>,
}

/// The interception CA: shared by all worker threads as `Arc<Ca>`.
pub struct Ca {
    /// The CA certificate, PEM, re-encoded from the DER (one certificate, nothing else).
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// The CA re-created by rcgen from its certificate: the source of each leaf's issuer name
    /// and authority key identifier. Built once at load.
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
    /// Whether the CA certificate has a subject key identifier for leaves to point at.
    issuer_has_ski: bool,
    issuer_not_after: OffsetDateTime,
    /// The signing key, as rustls uses it, and its public half, as rcgen writes it.
    leaf_key: Arc<dyn SigningKey>,
    leaf_public: SubjectPublicKeyInfo,
    leaf_is_rsa: bool,
    /// webpki with the CA as the only root: the check every leaf passes before it is used.
    verifier: Arc<WebPkiServerVerifier>,
    cert_dir: Option<PathBuf>,
    capacity: usize,
    cache: Mutex<Cache>,
    minted: AtomicU64,
    disk_warned: AtomicBool,
    temp_files: AtomicU64,
    rng: SystemRandom,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("issuer", &self.issuer.params().distinguished_name)
            .field("cert_dir", &self.cert_dir)
            .field("capacity", &self.capacity)
            .field("minted", &self.minted())
            .finish_non_exhaustive()
    }
}

/// A host as a leaf names it: the cache key (lower-case name or canonical IP), the SAN and the
/// name webpki checks it against.
struct Host {
    key: String,
    san: SanType,
    name: ServerName<'static>,
    ip: bool,
}

impl Host {
    fn parse(host: &str) -> Result<Host, String> {
        if host.is_empty() || host.contains('/') || host.contains('\0') || host.starts_with('.') {
            return Err(format!(
                "{host:?} is not a host a certificate can be made for"
            ));
        }
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Host {
                key: ip.to_string(),
                san: SanType::IpAddress(ip),
                name: ServerName::IpAddress(ip.into()),
                ip: true,
            });
        }
        let key = host.to_ascii_lowercase();
        let name = ServerName::try_from(key.clone())
            .map_err(|_| format!("{host:?} is not a valid DNS name"))?;
        let ia5 = key
            .as_str()
            .try_into()
            .map_err(|_| format!("{host:?} is not a valid DNS name"))?;
        Ok(Host {
            san: SanType::DnsName(ia5),
            name,
            key,
            ip: false,
        })
    }
}

impl Ca {
    /// Loads and checks the files: the CA key matches the CA certificate's public key, the
    /// certificate is not marked as a non-CA (basicConstraints CA:FALSE) and has not expired,
    /// the signing key parses, and a leaf signed with them verifies against the certificate.
    /// `cert_dir` (`--ca-cert-dir`) is created with mode 0700 if missing. The memory cache
    /// holds at most `capacity` leaves (at least one).
    ///
    /// CA keys may be PKCS#8 (`PRIVATE KEY`), PKCS#1 RSA (`RSA PRIVATE KEY`) or SEC1 EC
    /// (`EC PRIVATE KEY`, P-256 or P-384); RSA, ECDSA and Ed25519 keys are supported. The
    /// signing key may be any of those that rustls accepts.
    ///
    /// # Errors
    /// A one-line reason naming the file and the problem.
    pub fn load(
        files: CaFiles<'_>,
        cert_dir: Option<PathBuf>,
        capacity: usize,
    ) -> Result<Ca, String> {
        let (cert_path, key_path) = (files.cert.display(), files.key.display());
        let signing_path = files.signing_key.display();
        let cert_der = CertificateDer::from_pem_file(files.cert)
            .map_err(|e| format!("{cert_path}: cannot read a PEM certificate: {e}"))?;
        let ca_key_der = PrivateKeyDer::from_pem_file(files.key)
            .map_err(|e| format!("{key_path}: cannot read a PEM private key: {e}"))?;
        let signing_der = PrivateKeyDer::from_pem_file(files.signing_key)
            .map_err(|e| format!("{signing_path}: cannot read a PEM private key: {e}"))?;

        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| format!("{cert_path}: not an X.509 certificate: {e}"))?;
        match x509.basic_constraints() {
            Ok(Some(bc)) if !bc.value.ca => {
                return Err(format!(
                    "{cert_path}: not a CA certificate (basicConstraints CA:FALSE)"
                ))
            }
            Ok(Some(_)) => {}
            Ok(None) => tracing::warn!(
                "{cert_path}: no basicConstraints extension; clients may refuse it as a CA"
            ),
            Err(e) => return Err(format!("{cert_path}: unreadable basicConstraints: {e}")),
        }
        let issuer_not_after =
            OffsetDateTime::from_unix_timestamp(x509.validity().not_after.timestamp())
                .map_err(|e| format!("{cert_path}: unusable notAfter: {e}"))?;
        if issuer_not_after <= OffsetDateTime::now_utc() {
            return Err(format!(
                "{cert_path}: the CA certificate expired ({})",
                x509.validity().not_after
            ));
        }
        let issuer_key = ca_key_pair(&ca_key_der).map_err(|e| format!("{key_path}: {e}"))?;
        if issuer_key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(format!(
                "{key_path}: this key does not match the certificate {cert_path} (their public keys differ)"
            ));
        }
        let issuer_has_ski = x509.iter_extensions().any(|ext| {
            matches!(
                ext.parsed_extension(),
                ParsedExtension::SubjectKeyIdentifier(_)
            )
        });
        drop(x509);
        // rcgen keeps the certificate's subject key identifier (KeyIdMethod::PreSpecified), so
        // leaves name the CA's real key identifier; the probe below checks that chains build.
        let issuer = CertificateParams::from_ca_cert_der(&cert_der)
            .and_then(|params| params.self_signed(&issuer_key))
            .map_err(|e| format!("{cert_path}: cannot issue certificates under it: {e}"))?;

        let leaf_key = rustls::crypto::ring::sign::any_supported_type(&signing_der)
            .map_err(|e| format!("{signing_path}: not a usable signing key: {e}"))?;
        let leaf_public = leaf_key
            .public_key()
            .ok_or_else(|| format!("{signing_path}: the key's public half is unknown"))
            .and_then(|spki| {
                SubjectPublicKeyInfo::from_der(spki.as_ref())
                    .map_err(|e| format!("{signing_path}: unsupported public key: {e}"))
            })?;
        let leaf_is_rsa = leaf_key.algorithm() == rustls::SignatureAlgorithm::RSA;

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(cert_der.clone())
            .map_err(|e| format!("{cert_path}: not usable as a trust anchor: {e}"))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| format!("{cert_path}: not usable as a trust anchor: {e}"))?;

        if let Some(dir) = &cert_dir {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("{}: cannot create the directory: {e}", dir.display()))?;
        }

        let ca = Ca {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            issuer,
            issuer_key,
            issuer_has_ski,
            issuer_not_after,
            leaf_key,
            leaf_public,
            leaf_is_rsa,
            verifier,
            cert_dir,
            capacity: capacity.max(1),
            cache: Mutex::new(Cache::default()),
            minted: AtomicU64::new(0),
            disk_warned: AtomicBool::new(false),
            temp_files: AtomicU64::new(0),
            rng: SystemRandom::new(),
        };
        let probe = Host::parse(PROBE_HOST)?;
        let leaf = ca
            .mint(&probe, None)
            .map_err(|e| format!("{key_path}: cannot sign a certificate with it: {e}"))?;
        ca.verify(leaf.der(), &probe.name, SystemTime::now())
            .map_err(|e| {
                format!("{cert_path}: a certificate signed with {key_path} does not verify against it: {e}")
            })?;
        Ok(ca)
    }

    /// The CA certificate, PEM (served for download at `/_proxy/ca.pem`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER: the second certificate of every leaf's chain.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A leaf for `host` (a DNS name or an IP literal: `example.com`, `127.0.0.1`, `::1` or
    /// `[::1]`), with the chain [leaf, CA certificate] and the signing key. It comes from the
    /// memory cache, else from `cert_dir/<host>.pem` if that verifies against this CA for
    /// `host` and stays valid for another day, else it is minted now (and written to
    /// `cert_dir`). `origin` is the origin server's end-entity certificate (DER) when known:
    /// its subject (CN, C, ST, L, O, OU) is copied into a minted leaf, as proxy.py does;
    /// without it the subject is CN = host.
    ///
    /// Callers asking for the same host at the same time, from any thread, block until one
    /// of them has minted it. A failure is not cached: the next call tries again.
    ///
    /// # Errors
    /// `host` is not a DNS name or IP literal (or contains `/` or NUL, or starts with `.`),
    /// or signing failed.
    pub fn leaf(
        &self,
        host: &str,
        origin: Option<&CertificateDer<'_>>,
    ) -> Result<Arc<CertifiedKey>, String> {
        self.leaf_kept(host, origin, true)
    }

    /// Whether a certificate can name `host` at all (a DNS name or an IP literal):
    /// when not, a leaf for it fails because of what the client asked for.
    pub fn can_name(host: &str) -> bool {
        Host::parse(host).is_ok()
    }

    /// [`Ca::leaf`], writing a leaf it mints to `cert_dir` only if `persist`: a leaf
    /// minted to show a client the error of an origin that failed stays in memory, so
    /// that clients naming made-up hosts cannot fill the disk (the memory cache is
    /// bounded).
    ///
    /// # Errors
    /// As [`Ca::leaf`].
    pub fn leaf_kept(
        &self,
        host: &str,
        origin: Option<&CertificateDer<'_>>,
        persist: bool,
    ) -> Result<Arc<CertifiedKey>, String> {
        let host = Host::parse(host)?;
        let slot = self.slot(&host.key);
        match slot.get_or_init(|| self.obtain(&host, origin, persist)) {
            Ok(leaf) => Ok(Arc::clone(leaf)),
            Err(e) => {
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if cache
                    .slots
                    .get(&host.key)
                    .is_some_and(|s| Arc::ptr_eq(s, &slot))
                {
                    cache.slots.remove(&host.key);
                    cache.order.retain(|k| *k != host.key);
                }
                Err(e.clone())
            }
        }
    }

    /// How many leaves were minted (not loaded from disk or memory); the load-time probe
    /// does not count.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// The cache slot for `key`, made (evicting the oldest entries when full) if missing.
    fn slot(&self, key: &str) -> Slot {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = cache.slots.get(key) {
            return Arc::clone(slot);
        }
        while cache.slots.len() >= self.capacity {
            let Some(oldest) = cache.order.pop_front() else {
                break;
            };
            cache.slots.remove(&oldest);
        }
        let slot = Slot::default();
        cache.slots.insert(key.to_owned(), Arc::clone(&slot));
        cache.order.push_back(key.to_owned());
        slot
    }

    /// A leaf from disk, or minted (and written to disk).
    fn obtain(
        &self,
        host: &Host,
        origin: Option<&CertificateDer<'_>>,
        persist: bool,
    ) -> Result<Arc<CertifiedKey>, String> {
        let path = self
            .cert_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.pem", host.key)));
        if let Some(leaf) = path.as_deref().and_then(|p| self.read_cached(p, host)) {
            return Ok(leaf);
        }
        let leaf = self.mint(host, origin)?;
        self.minted.fetch_add(1, Ordering::Relaxed);
        if let (Some(path), true) = (&path, persist) {
            if let Err(e) = self.write_atomically(path, leaf.pem().as_bytes()) {
                if !self.disk_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cannot write the certificate cache {}: {e} (leaves are still served from memory; this is reported once)",
                        path.display()
                    );
                }
            }
        }
        Ok(Arc::new(self.certified(leaf.der().clone())))
    }

    /// A leaf certificate for `host`, signed by the CA, carrying the signing key.
    fn mint(
        &self,
        host: &Host,
        origin: Option<&CertificateDer<'_>>,
    ) -> Result<rcgen::Certificate, String> {
        let mut params = CertificateParams::default();
        params.not_before = OffsetDateTime::now_utc() - BACKDATE;
        params.not_after = (params.not_before + LEAF_LIFETIME).min(self.issuer_not_after);
        params.serial_number = Some(random_serial(&self.rng)?);
        params.subject_alt_names = vec![host.san.clone()];
        params.distinguished_name = leaf_subject(&host.key, host.ip, origin);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if self.leaf_is_rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Without a subject key identifier on the CA there is nothing for an AKI to name.
        params.use_authority_key_identifier_extension = self.issuer_has_ski;
        params
            .signed_by(&self.leaf_public, &self.issuer, &self.issuer_key)
            .map_err(|e| format!("cannot sign a certificate for {}: {e}", host.key))
    }

    /// Checks `leaf` as a client would: chains to the CA, names `name`, valid at `at`.
    fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        name: &ServerName<'_>,
        at: SystemTime,
    ) -> Result<(), String> {
        let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
        self.verifier
            .verify_server_cert(leaf, &[], name, &[], at)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn certified(&self, leaf: CertificateDer<'static>) -> CertifiedKey {
        CertifiedKey::new(
            vec![leaf, self.cert_der.clone()],
            Arc::clone(&self.leaf_key),
        )
    }

    /// The leaf in `path`, if it verifies against this CA for `host`, stays valid for
    /// another [`DISK_MARGIN`] and carries the signing key. Anything else is a miss: the
    /// caller mints and overwrites it.
    fn read_cached(&self, path: &Path, host: &Host) -> Option<Arc<CertifiedKey>> {
        let pem = match fs::read(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::debug!("{}: unreadable, minting anew: {e}", path.display());
                return None;
            }
        };
        let der = CertificateDer::from_pem_slice(&pem).ok()?;
        if let Err(e) = self.verify(&der, &host.name, SystemTime::now() + DISK_MARGIN) {
            tracing::debug!("{}: not reusable, minting anew: {e}", path.display());
            return None;
        }
        let leaf = self.certified(der);
        leaf.keys_match().ok()?;
        Some(Arc::new(leaf))
    }

    /// Writes `contents` to `path` with mode 0600 via a temporary file in the same directory,
    /// so a reader sees the old file or the new one, never part of one.
    fn write_atomically(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let n = self.temp_files.fetch_add(1, Ordering::Relaxed);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // Hosts never start with '.', so a temporary name cannot be another host's file.
        let temp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let written = write_new(&temp, contents, 0o600).and_then(|()| fs::rename(&temp, path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }
}

/// A leaf's subject: CN, C, ST, L, O and OU from the origin's certificate when given and
/// parseable; the host as CN when the origin names none (and the host fits in a CN).
fn leaf_subject(host: &str, ip: bool, origin: Option<&CertificateDer<'_>>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    let mut has_cn = false;
    if let Some(Ok((_, cert))) = origin.map(|der| x509_parser::parse_x509_certificate(der)) {
        let name: &X509Name<'_> = cert.subject();
        fn first<'a, 'b: 'a>(
            mut values: impl Iterator<Item = &'a AttributeTypeAndValue<'b>>,
        ) -> Option<String> {
            values.find_map(|v| v.as_str().ok()).map(str::to_owned)
        }
        if let Some(c) = first(name.iter_country()) {
            match rcgen::PrintableString::try_from(c.as_str()) {
                Ok(printable) => dn.push(DnType::CountryName, DnValue::PrintableString(printable)),
                Err(_) => dn.push(DnType::CountryName, c),
            }
        }
        for (ty, value) in [
            (
                DnType::StateOrProvinceName,
                first(name.iter_state_or_province()),
            ),
            (DnType::LocalityName, first(name.iter_locality())),
            (DnType::OrganizationName, first(name.iter_organization())),
            (
                DnType::OrganizationalUnitName,
                first(name.iter_organizational_unit()),
            ),
            (DnType::CommonName, first(name.iter_common_name())),
        ] {
            if let Some(value) = value {
                has_cn |= ty == DnType::CommonName;
                dn.push(ty, value);
            }
        }
    }
    if !has_cn && (ip || host.len() <= MAX_CN) {
        dn.push(DnType::CommonName, host);
    }
    dn
}

/// A random positive 16-byte serial. The top bit is cleared (so the number is positive) and
/// the next one set, so the DER integer is always exactly 16 bytes: 126 random bits.
fn random_serial(rng: &SystemRandom) -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_owned())?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The CA key as rcgen signs with it. rcgen with ring reads PKCS#8 only, so a PKCS#1 RSA key
/// or a SEC1 EC key is first wrapped into PKCS#8 (the key bytes are unchanged).
fn ca_key_pair(key: &PrivateKeyDer<'_>) -> Result<KeyPair, String> {
    const SUPPORTED: &str =
        "supported CA keys are RSA, ECDSA P-256/P-384 and Ed25519, as PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM";
    let pkcs8 = |alg_id: &[u8], inner: &[u8]| -> Result<KeyPair, String> {
        let wrapped = PrivatePkcs8KeyDer::from(wrap_pkcs8(alg_id, inner));
        KeyPair::try_from(&wrapped)
            .map_err(|e| format!("unsupported private key ({e}); {SUPPORTED}"))
    };
    match key {
        PrivateKeyDer::Pkcs8(key) => KeyPair::try_from(key)
            .map_err(|e| format!("unsupported private key ({e}); {SUPPORTED}")),
        PrivateKeyDer::Pkcs1(key) => pkcs8(RSA_ENCRYPTION, key.secret_pkcs1_der()),
        // ring rejects the wrapping whose curve does not match the key's own parameters.
        PrivateKeyDer::Sec1(key) => {
            pkcs8(EC_P256, key.secret_sec1_der()).or_else(|_| pkcs8(EC_P384, key.secret_sec1_der()))
        }
        _ => Err(format!("unknown private key format; {SUPPORTED}")),
    }
}

/// AlgorithmIdentifier contents: rsaEncryption, NULL parameters.
const RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// AlgorithmIdentifier contents: id-ecPublicKey, prime256v1.
const EC_P256: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];
/// AlgorithmIdentifier contents: id-ecPublicKey, secp384r1.
const EC_P384: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22,
];

/// A PKCS#8 v1 PrivateKeyInfo: version 0, the algorithm, the key as an OCTET STRING.
fn wrap_pkcs8(alg_id: &[u8], key: &[u8]) -> Vec<u8> {
    let mut info = vec![0x02, 0x01, 0x00];
    info.extend_from_slice(&der(0x30, alg_id));
    info.extend_from_slice(&der(0x04, key));
    der(0x30, &info)
}

/// One DER TLV with a definite length.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Creates `path` (failing if it exists) with `mode` and writes `contents` to it.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)
}

/// What `--ca-generate` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// The CA's private key, `ca-key.pem` (mode 0600).
    pub key: PathBuf,
    /// The CA certificate, `ca-cert.pem`: the file clients must trust.
    pub cert: PathBuf,
    /// The leaves' private key, `signing-key.pem` (mode 0600).
    pub signing_key: PathBuf,
}

/// Writes a new CA to `dir` (created with mode 0700 if missing): `ca-key.pem`, `ca-cert.pem`
/// and `signing-key.pem`, the two keys with mode 0600. Both keys are ECDSA P-256 (PKCS#8),
/// so leaves mint fast. The certificate is CN "proxy CA", O "proxy", valid from an hour ago
/// for ten years, basicConstraints CA:TRUE with pathlen 0, key usage keyCertSign, cRLSign
/// and digitalSignature.
///
/// # Errors
/// One of the three files already exists (nothing is overwritten), the directory or a file
/// cannot be written, or key generation failed.
pub fn generate(dir: &Path) -> Result<Generated, String> {
    let generated = Generated {
        key: dir.join("ca-key.pem"),
        cert: dir.join("ca-cert.pem"),
        signing_key: dir.join("signing-key.pem"),
    };
    for path in [&generated.key, &generated.cert, &generated.signing_key] {
        if path.symlink_metadata().is_ok() {
            return Err(format!(
                "{}: already exists; not overwriting it (move it away or choose another directory)",
                path.display()
            ));
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: cannot create the directory: {e}", dir.display()))?;

    let new_key = || {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot generate an ECDSA P-256 key: {e}"))
    };
    let (ca_key, signing_key) = (new_key()?, new_key()?);
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "proxy CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "proxy");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::now_utc() - BACKDATE;
    params.not_after = params.not_before + CA_LIFETIME;
    params.serial_number = Some(random_serial(&SystemRandom::new())?);
    let cert = params
        .self_signed(&ca_key)
        .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;

    for (path, contents, mode) in [
        (&generated.key, ca_key.serialize_pem(), 0o600),
        (&generated.cert, cert.pem(), 0o644),
        (&generated.signing_key, signing_key.serialize_pem(), 0o600),
    ] {
        write_new(path, contents.as_bytes(), mode)
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    }
    Ok(generated)
}

/// The text `--ca-generate` prints: the flags to pass to `proxy`, and how to make clients
/// trust the CA (Debian/Ubuntu, Firefox, Chromium/Chrome on Linux, curl, Python requests).
pub fn instructions(generated: &Generated) -> String {
    let key = shell_quote(&generated.key);
    let cert = shell_quote(&generated.cert);
    let signing = shell_quote(&generated.signing_key);
    format!(
        "\
Wrote a new interception CA:
  {key}  the CA key: keep it secret, it can impersonate any site to whoever trusts the CA
  {cert}  the CA certificate: the file clients must trust
  {signing}  the signing key: the key of every certificate the proxy makes

Run the proxy with:
  proxy --ca-key-file {key} --ca-cert-file {cert} --ca-signing-key-file {signing}

Trust the CA certificate in each client that goes through the proxy:
  Debian/Ubuntu (system store, used by curl, wget, apt, ...):
    sudo cp {cert} /usr/local/share/ca-certificates/proxy-ca.crt && sudo update-ca-certificates
  Firefox:
    Settings → Privacy & Security → Certificates → View Certificates → Authorities → Import,
    choose {cert}, tick \"Trust this CA to identify websites\"
  Chromium/Chrome on Linux (certutil is in libnss3-tools):
    certutil -d sql:$HOME/.pki/nssdb -A -t \"C,,\" -n proxy-ca -i {cert}
  curl, for one command:
    curl --proxy http://127.0.0.1:8899 --cacert {cert} https://example.com/
  Python requests:
    export REQUESTS_CA_BUNDLE={cert}

While interception is on, the proxy also serves the certificate at http://<proxy>/_proxy/ca.pem.
"
    )
}

/// `path` as one shell word: unchanged when it is made of safe characters, single-quoted
/// otherwise.
fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+,:=@%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::sync::Barrier;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("proxy-tls-ca-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn files(g: &Generated) -> CaFiles<'_> {
        CaFiles {
            key: &g.key,
            cert: &g.cert,
            signing_key: &g.signing_key,
        }
    }

    fn new_ca(dir: &TempDir, cert_dir: Option<PathBuf>, capacity: usize) -> Ca {
        let generated = generate(&dir.0).unwrap();
        Ca::load(files(&generated), cert_dir, capacity).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Verifies `leaf` for `host` with a webpki verifier of its own, the CA as the only root.
    fn client_accepts(ca: &Ca, leaf: &CertifiedKey, host: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = ServerName::try_from(host.to_owned()).unwrap();
        verifier
            .verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn openssl() -> bool {
        let found = Command::new("openssl").arg("version").output().is_ok();
        if !found {
            eprintln!("openssl not found: skipping the openssl checks");
        }
        found
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `openssl verify -CAfile ca leaf` on `leaf`'s first certificate.
    fn openssl_verifies(dir: &Path, ca: &Ca, leaf: &CertifiedKey) {
        let (ca_path, leaf_path) = (dir.join("verify-ca.pem"), dir.join("verify-leaf.pem"));
        fs::write(&ca_path, ca.cert_pem()).unwrap();
        fs::write(&leaf_path, pem_encode("CERTIFICATE", &leaf.cert[0])).unwrap();
        run(Command::new("openssl")
            .args(["verify", "-purpose", "sslserver", "-CAfile"])
            .arg(&ca_path)
            .arg(&leaf_path));
    }

    #[test]
    fn ca_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Ca>();
    }

    #[test]
    fn generate_writes_three_files_and_refuses_to_overwrite() {
        let dir = TempDir::new("generate");
        let generated = generate(&dir.0).unwrap();
        assert_eq!(generated.cert, dir.0.join("ca-cert.pem"));
        assert_eq!(mode(&dir.0), 0o700);
        assert_eq!(mode(&generated.key), 0o600);
        assert_eq!(mode(&generated.signing_key), 0o600);
        let err = generate(&dir.0).unwrap_err();
        assert!(err.contains("already exists"), "{err}");

        let ca = Ca::load(files(&generated), None, 10).unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(x509.subject().to_string(), "CN=proxy CA, O=proxy");
        let bc = x509.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint == Some(0));
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        let days = (x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp())
            / 86_400;
        assert!((3650..=3651).contains(&days), "{days}");

        let text = instructions(&generated);
        for needle in [
            "--ca-key-file",
            "--ca-cert-file",
            "--ca-signing-key-file",
            "update-ca-certificates",
            "certutil -d sql:$HOME/.pki/nssdb",
            "--cacert",
            "REQUESTS_CA_BUNDLE",
            "/_proxy/ca.pem",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(text.contains(&generated.cert.display().to_string()));
        assert_eq!(shell_quote(Path::new("/a b/c'd")), r"'/a b/c'\''d'");
    }

    #[test]
    fn leaves_verify_for_dns_names_and_ip_literals() {
        let dir = TempDir::new("verify");
        let ca = new_ca(&dir, None, 10);
        let leaf = ca.leaf("Example.COM", None).unwrap();
        assert_eq!(leaf.cert.len(), 2);
        assert_eq!(&leaf.cert[1], ca.cert_der());
        leaf.keys_match().unwrap();
        client_accepts(&ca, &leaf, "example.com").unwrap();
        assert!(client_accepts(&ca, &leaf, "example.org").is_err());

        for (host, name) in [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("[::1]", "::1")] {
            let leaf = ca.leaf(host, None).unwrap();
            client_accepts(&ca, &leaf, name).unwrap();
            let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
            let san = x509.subject_alternative_name().unwrap().unwrap().value;
            assert_eq!(san.general_names.len(), 1, "{host}: one SAN");
            assert!(
                matches!(
                    san.general_names[0],
                    x509_parser::extensions::GeneralName::IPAddress(_)
                ),
                "{host}: an IP SAN, no DNS SAN"
            );
        }
        // "::1" and "[::1]" are one host.
        assert_eq!(ca.minted(), 3);
    }

    #[test]
    fn leaves_have_random_serials_and_bounded_validity() {
        let dir = TempDir::new("serials");
        let ca = new_ca(&dir, None, 10);
        let (a, b) = (
            ca.leaf("a.test", None).unwrap(),
            ca.leaf("b.test", None).unwrap(),
        );
        let (_, a) = x509_parser::parse_x509_certificate(&a.cert[0]).unwrap();
        let (_, b) = x509_parser::parse_x509_certificate(&b.cert[0]).unwrap();
        assert_eq!(a.raw_serial().len(), 16);
        assert_eq!(b.raw_serial().len(), 16);
        assert!(a.raw_serial()[0] & 0x80 == 0, "positive");
        assert_ne!(a.raw_serial(), b.raw_serial());

        let now = OffsetDateTime::now_utc().unix_timestamp();
        let (from, to) = (
            a.validity().not_before.timestamp(),
            a.validity().not_after.timestamp(),
        );
        assert!(from <= now - 3500, "backdated about an hour");
        assert!(to - from <= 397 * 86_400);
        assert!(to > now + 396 * 86_400);

        let eku = a.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let ku = a.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
        assert!(!a.is_ca());
        assert_eq!(a.subject().to_string(), "CN=a.test");
    }

    #[test]
    fn leaf_names_the_ca_key_identifier() {
        let dir = TempDir::new("aki");
        let ca = new_ca(&dir, None, 10);
        let leaf = ca.leaf("aki.test", None).unwrap();
        let (_, ca_x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        let (_, leaf_x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
        let ski = ca_x509
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let aki = leaf_x509
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);
        assert_eq!(leaf_x509.issuer().as_raw(), ca_x509.subject().as_raw());
        if openssl() {
            openssl_verifies(&dir.0, &ca, &leaf);
        }
    }

    #[test]
    fn subject_is_copied_from_the_origin() {
        let dir = TempDir::new("origin");
        let ca = new_ca(&dir, None, 10);
        let mut params = CertificateParams::new(vec!["upstream.test".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "DE");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "UpstreamOrg");
        params
            .distinguished_name
            .push(DnType::CommonName, "upstream.test");
        let origin_key = KeyPair::generate().unwrap();
        let origin = params.self_signed(&origin_key).unwrap();

        let leaf = ca.leaf("upstream.test", Some(origin.der())).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
        assert_eq!(
            x509.subject().to_string(),
            "C=DE, O=UpstreamOrg, CN=upstream.test"
        );
        client_accepts(&ca, &leaf, "upstream.test").unwrap();

        // An origin that is not a certificate is ignored.
        let garbage = CertificateDer::from(vec![1, 2, 3]);
        let leaf = ca.leaf("other.test", Some(&garbage)).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
        assert_eq!(x509.subject().to_string(), "CN=other.test");
    }

    #[test]
    fn concurrent_callers_mint_once() {
        let dir = TempDir::new("flight");
        let ca = Arc::new(new_ca(&dir, None, 10));
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (ca, barrier) = (Arc::clone(&ca), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    ca.leaf("new.test", None).unwrap()
                })
            })
            .collect();
        let leaves: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(ca.minted(), 1);
        assert!(leaves.iter().all(|leaf| Arc::ptr_eq(leaf, &leaves[0])));
    }

    #[test]
    fn memory_cache_is_bounded() {
        let dir = TempDir::new("bound");
        let ca = new_ca(&dir, None, 2);
        for host in ["a.test", "b.test", "c.test", "c.test", "b.test"] {
            ca.leaf(host, None).unwrap();
        }
        assert_eq!(ca.minted(), 3);
        assert_eq!(ca.cache.lock().unwrap().slots.len(), 2);
        ca.leaf("a.test", None).unwrap(); // the oldest, evicted by c.test
        assert_eq!(ca.minted(), 4);
        let cache = ca.cache.lock().unwrap();
        assert_eq!(cache.slots.len(), 2);
        assert_eq!(cache.order, ["c.test", "a.test"]);
    }

    #[test]
    fn unsafe_hosts_are_refused_and_not_cached() {
        let dir = TempDir::new("hosts");
        let ca = new_ca(&dir, None, 10);
        for host in [
            "",
            "../etc",
            "a/b",
            "a\0b",
            ".hidden",
            "bad host",
            "ex\u{e4}mple.test",
        ] {
            assert!(ca.leaf(host, None).is_err(), "{host:?}");
        }
        assert_eq!(ca.minted(), 0);
        assert!(ca.cache.lock().unwrap().slots.is_empty());
    }

    #[test]
    fn names_a_certificate_can_carry() {
        for host in ["example.com", "127.0.0.1", "::1", "[::1]", "localhost"] {
            assert!(Ca::can_name(host), "{host}");
        }
        // Resolvers take `127.1`; certificates cannot name it.
        for host in ["127.1", "", "a/b", ".example.com"] {
            assert!(!Ca::can_name(host), "{host:?}");
        }
    }

    #[test]
    fn a_leaf_not_kept_stays_off_the_disk() {
        let dir = TempDir::new("unkept");
        let generated = generate(&dir.0.join("ca")).unwrap();
        let cert_dir = dir.0.join("certs");
        let ca = Ca::load(files(&generated), Some(cert_dir.clone()), 10).unwrap();
        let leaf = ca.leaf_kept("made-up.test", None, false).unwrap();
        assert!(!cert_dir.join("made-up.test.pem").exists());
        // Served from memory after that, the same leaf.
        assert_eq!(ca.leaf("made-up.test", None).unwrap().cert, leaf.cert);
        ca.leaf_kept("kept.test", None, true).unwrap();
        assert!(cert_dir.join("kept.test.pem").exists());
    }

    #[test]
    fn disk_cache_is_shared_across_instances() {
        let dir = TempDir::new("disk");
        let generated = generate(&dir.0.join("ca")).unwrap();
        let cert_dir = dir.0.join("certs/nested");
        let ca = Ca::load(files(&generated), Some(cert_dir.clone()), 10).unwrap();
        assert_eq!(mode(&cert_dir), 0o700);
        let first = ca.leaf("disk.test", None).unwrap();
        let ip = ca.leaf("::1", None).unwrap();
        let path = cert_dir.join("disk.test.pem");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&cert_dir.join("::1.pem")), 0o600);
        let mut names: Vec<_> = fs::read_dir(&cert_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["::1.pem", "disk.test.pem"],
            "no temporary files left"
        );

        let again = Ca::load(files(&generated), Some(cert_dir.clone()), 10).unwrap();
        assert_eq!(again.leaf("disk.test", None).unwrap().cert, first.cert);
        assert_eq!(again.leaf("::1", None).unwrap().cert, ip.cert);
        assert_eq!(again.minted(), 0);

        // Another CA with the same name ("proxy CA") does not accept this CA's files: they
        // are minted again and overwritten.
        let other_ca = generate(&dir.0.join("other")).unwrap();
        let other = Ca::load(files(&other_ca), Some(cert_dir.clone()), 10).unwrap();
        let replaced = other.leaf("disk.test", None).unwrap();
        assert_eq!(other.minted(), 1);
        assert_ne!(replaced.cert[0], first.cert[0]);
        client_accepts(&other, &replaced, "disk.test").unwrap();
        let on_disk = CertificateDer::from_pem_file(&path).unwrap();
        assert_eq!(on_disk, replaced.cert[0]);

        // A damaged file is a miss too.
        fs::write(cert_dir.join("::1.pem"), "not a certificate").unwrap();
        let _ = other.leaf("::1", None).unwrap();
        assert_eq!(other.minted(), 2);
    }

    #[test]
    fn disk_write_failure_does_not_fail_the_leaf() {
        let dir = TempDir::new("readonly");
        let generated = generate(&dir.0.join("ca")).unwrap();
        let cert_dir = dir.0.join("certs");
        let ca = Ca::load(files(&generated), Some(cert_dir.clone()), 10).unwrap();
        fs::remove_dir(&cert_dir).unwrap();
        fs::write(&cert_dir, "a file where the directory was").unwrap();
        ca.leaf("a.test", None).unwrap();
        ca.leaf("b.test", None).unwrap();
        assert_eq!(ca.minted(), 2);
    }

    #[test]
    fn load_refuses_a_key_that_does_not_match_the_certificate() {
        let dir = TempDir::new("mismatch");
        let a = generate(&dir.0.join("a")).unwrap();
        let b = generate(&dir.0.join("b")).unwrap();
        let err = Ca::load(
            CaFiles {
                key: &a.key,
                cert: &b.cert,
                signing_key: &a.signing_key,
            },
            None,
            10,
        )
        .unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        assert!(err.starts_with(&a.key.display().to_string()), "{err}");

        // A certificate where a key belongs, and a missing file, are named too.
        let err = Ca::load(
            CaFiles {
                key: &a.key,
                cert: &a.cert,
                signing_key: &a.cert,
            },
            None,
            10,
        )
        .unwrap_err();
        assert!(err.starts_with(&a.cert.display().to_string()), "{err}");
        let missing = dir.0.join("missing.pem");
        let err = Ca::load(
            CaFiles {
                key: &missing,
                cert: &a.cert,
                signing_key: &a.signing_key,
            },
            None,
            10,
        )
        .unwrap_err();
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn openssl_made_cas_sign_leaves_openssl_accepts() {
        if !openssl() {
            return;
        }
        let dir = TempDir::new("openssl");
        fs::create_dir_all(&dir.0).unwrap();
        let p = |name: &str| dir.0.join(name);
        // RSA-2048, PKCS#8 ("PRIVATE KEY"), as `openssl req -newkey` writes it.
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            ])
            .args(["-subj", "/C=US/O=Test Org/CN=Test RSA CA", "-keyout"])
            .arg(p("rsa-key.pem"))
            .arg("-out")
            .arg(p("rsa-cert.pem")));
        // The same key as PKCS#1 ("RSA PRIVATE KEY").
        run(Command::new("openssl")
            .args(["rsa", "-traditional", "-in"])
            .arg(p("rsa-key.pem"))
            .arg("-out")
            .arg(p("rsa-key-pkcs1.pem")));
        // An ECDSA P-384 CA with a SEC1 key ("EC PRIVATE KEY").
        run(Command::new("openssl")
            .args(["ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out"])
            .arg(p("ec-key.pem")));
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-new",
                "-days",
                "30",
                "-subj",
                "/CN=Test EC CA",
            ])
            .arg("-key")
            .arg(p("ec-key.pem"))
            .arg("-out")
            .arg(p("ec-cert.pem")));
        assert!(fs::read_to_string(p("rsa-key-pkcs1.pem"))
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert!(fs::read_to_string(p("ec-key.pem"))
            .unwrap()
            .starts_with("-----BEGIN EC PRIVATE KEY-----"));

        for (key, cert, signing_key) in [
            ("rsa-key.pem", "rsa-cert.pem", "rsa-key.pem"),
            ("rsa-key-pkcs1.pem", "rsa-cert.pem", "rsa-key-pkcs1.pem"),
            ("ec-key.pem", "ec-cert.pem", "ec-key.pem"),
            ("rsa-key.pem", "rsa-cert.pem", "ec-key.pem"),
        ] {
            let (key, cert, signing_key) = (p(key), p(cert), p(signing_key));
            let ca = Ca::load(
                CaFiles {
                    key: &key,
                    cert: &cert,
                    signing_key: &signing_key,
                },
                None,
                10,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", key.display()));
            for host in ["openssl.test", "10.0.0.1"] {
                let leaf = ca.leaf(host, None).unwrap();
                client_accepts(&ca, &leaf, host).unwrap();
                openssl_verifies(&dir.0, &ca, &leaf);
            }
            let leaf = ca.leaf("openssl.test", None).unwrap();
            let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
            let rsa_leaf =
                signing_key.ends_with("rsa-key.pem") || signing_key.ends_with("rsa-key-pkcs1.pem");
            let ku = x509.key_usage().unwrap().unwrap().value;
            assert_eq!(ku.key_encipherment(), rsa_leaf);
        }
    }
}
