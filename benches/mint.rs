//! Minting a leaf certificate for a first-seen host (a new name every iteration, no
//! `--ca-cert-dir`): with the ECDSA P-256 CA `--ca-generate` writes, and with an RSA-2048 CA
//! made by the `openssl` binary when it is installed (rcgen with ring cannot make RSA keys).
//!
//! Run: `cargo bench --bench mint`. After criterion's estimates the bench mints 5,000 more
//! leaves per CA, timing each, and prints the median, p99 and maximum: criterion reports
//! means and their confidence intervals, not tails.
#![expect(
    clippy::expect_used,
    reason = "bench setup: any failure should stop the run"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use proxy::tls::ca::{generate, Ca, CaFiles};

/// Hosts are numbered across the whole run so every mint is for a host the CA has not seen.
static NEXT_HOST: AtomicU64 = AtomicU64::new(0);

fn mint(ca: &Ca) {
    let n = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
    let leaf = ca
        .leaf(&format!("host-{n}.bench.test"), None)
        .expect("mint a leaf");
    black_box(leaf);
}

fn ecdsa_ca(dir: &Path) -> Ca {
    let generated = generate(&dir.join("ecdsa")).expect("generate a CA");
    Ca::load(
        CaFiles {
            key: &generated.key,
            cert: &generated.cert,
            signing_key: &generated.signing_key,
        },
        None,
        1024,
    )
    .expect("load the generated CA")
}

/// An RSA-2048 CA whose key also signs as the leaves' key, as proxy.py's `make ca-certificates`
/// sets it up; `None` without the `openssl` binary.
fn rsa_ca(dir: &Path) -> Option<Ca> {
    let (key, cert) = (dir.join("rsa-key.pem"), dir.join("rsa-cert.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=bench RSA CA", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .is_ok_and(|out| out.status.success());
    if !made {
        eprintln!("openssl not found or failed: skipping the RSA-2048 CA");
        return None;
    }
    let files = CaFiles {
        key: &key,
        cert: &cert,
        signing_key: &key,
    };
    Some(Ca::load(files, None, 1024).expect("load the openssl-made CA"))
}

/// Times `count` mints one by one and prints the median, p99 and maximum.
fn tail(name: &str, ca: &Ca, count: usize) {
    let mut times: Vec<Duration> = (0..count)
        .map(|_| {
            let start = Instant::now();
            mint(ca);
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    let at = |q: f64| times[((count as f64 * q) as usize).min(count - 1)];
    println!(
        "mint/{name}: {count} mints: median {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        times[count - 1]
    );
}

fn main() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("proxy-bench-mint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    let mut cas = vec![("ecdsa_p256", ecdsa_ca(&dir))];
    cas.extend(rsa_ca(&dir).map(|ca| ("rsa_2048", ca)));

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("mint");
    for (name, ca) in &cas {
        group.bench_function(*name, |b| b.iter(|| mint(ca)));
    }
    group.finish();
    criterion.final_summary();

    // `cargo bench` passes --bench; `cargo test --benches` does not, and runs each bench once.
    if std::env::args().any(|arg| arg == "--bench") {
        for (name, ca) in &cas {
            tail(name, ca, 5_000);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
