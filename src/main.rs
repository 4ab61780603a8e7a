//! The `proxy` binary: argv → `Config` → logging → rlimit, pid file → `proxy::start` →
//! wait for SIGINT/SIGTERM → drain → exit. All the work lives in the library.

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match proxy::Config::from_args(std::env::args_os()) {
        Ok(config) => config,
        Err(err) => return exit_with(&err),
    };
    if let Some(dir) = &config.ca_generate {
        return match proxy::tls::ca::generate(dir) {
            Ok(generated) => {
                print!("{}", proxy::tls::ca::instructions(&generated));
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("proxy: error: --ca-generate: {msg}");
                ExitCode::from(64)
            }
        };
    }
    // Unknown `--plugins` names (and plugin flags that fail) are a usage error, reported
    // before anything starts; the factories built here are the ones the proxy runs.
    let factories = match proxy::plugin::registry::factories(&config) {
        Ok(factories) => factories,
        Err(msg) => {
            eprintln!("proxy: error: {msg}");
            return ExitCode::from(64);
        }
    };
    if config.list_commands {
        for factory in &factories {
            for (name, help) in factory.commands() {
                if help.is_empty() {
                    println!("{name}");
                } else {
                    println!("{name}\t{help}");
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    let _log_guard = match proxy::logging::init(&config.log) {
        Ok(guard) => guard,
        Err(err) => return exit_with(&err),
    };
    // TLS files are read and checked before anything listens: a bad one is a usage
    // error. (After logging starts, so that --insecure-tls-interception's warning shows.)
    let tls = match proxy::tls::TlsContext::new(&config.tls) {
        Ok(tls) => tls,
        Err(msg) => {
            eprintln!("proxy: error: {msg}");
            return ExitCode::from(64);
        }
    };
    raise_open_file_limit(config.open_file_limit);
    run(config, factories, tls)
}

/// The pid and port files this process wrote, removed when it ends: also when a worker
/// that could not stop was left behind (the proxy's handle, waiting for it, never
/// removes its port file then). Files of a start that failed are not touched: they may
/// be another instance's.
struct OwnFiles(Vec<std::path::PathBuf>);

impl Drop for OwnFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Starts the proxy and blocks until a signal has stopped it.
fn run(
    config: proxy::Config,
    factories: Vec<std::sync::Arc<dyn proxy::plugin::PluginFactory>>,
    tls: proxy::tls::TlsContext,
) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build();
    // Handlers go in before the listeners, so an early SIGTERM still drains and cleans up.
    let signals = runtime.and_then(|rt| {
        let int = rt.block_on(async { signal(SignalKind::interrupt()) })?;
        let term = rt.block_on(async { signal(SignalKind::terminate()) })?;
        // A closed terminal: stop as for SIGTERM (the default would exit at once and
        // leave the pid file behind).
        let hup = rt.block_on(async { signal(SignalKind::hangup()) })?;
        Ok((rt, int, term, hup))
    });
    let (rt, mut int, mut term, mut hup) = match signals {
        Ok(parts) => parts,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let grace = config.grace_period;
    let workers = config.num_workers;
    let (pid_file, port_file) = (config.pid_file.clone(), config.port_file.clone());
    announce(&config, &factories);
    let handle = match proxy::server::start_prepared(config, factories, tls) {
        Ok(handle) => handle,
        Err(e) => {
            // Also on stderr: with --log-file the log alone would leave the terminal
            // silent. Exit 1, not 64: the flags were valid, the system refused (a
            // port in use, an address this host does not have).
            tracing::error!("{e}");
            eprintln!("proxy: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut own = OwnFiles(port_file.into_iter().collect());
    // Written once listening: a second instance that cannot bind leaves the first's be.
    if let Some(path) = pid_file {
        if let Err(e) = std::fs::write(&path, std::process::id().to_string()) {
            let msg = format!("cannot write --pid-file {}: {e}", path.display());
            tracing::error!("{msg}");
            eprintln!("proxy: error: {msg}");
            handle.stop();
            return ExitCode::FAILURE;
        }
        own.0.push(path);
    }
    let addrs: Vec<String> = handle
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(
        "proxy v{} listening on {} with {workers} worker{}",
        env!("CARGO_PKG_VERSION"),
        addrs.join(", "),
        if workers == 1 { "" } else { "s" }
    );
    let name = rt.block_on(async {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        }
    });
    tracing::info!("{name} received; draining for up to {grace:?} (send it again to stop now)");
    handle.shutdown();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        handle.wait();
        let _ = done_tx.send(());
    });
    // Past the grace period the workers close what is left; one that cannot (stuck in a
    // single long call, such as a script's pathological `string.find`, which the
    // instruction limit cannot interrupt) does not hold the process up for long.
    let deadline = grace.saturating_add(STOP_MARGIN);
    let drained = rt.block_on(async {
        tokio::select! {
            _ = done_rx => Ok(()),
            _ = int.recv() => Err(SECOND_SIGNAL),
            _ = term.recv() => Err(SECOND_SIGNAL),
            _ = hup.recv() => Err(SECOND_SIGNAL),
            _ = tokio::time::sleep(deadline) => Err("a worker did not stop within the grace period: exiting"),
        }
    });
    match drained {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            tracing::warn!("{why}");
            ExitCode::FAILURE
        }
    }
}

/// Logged when a second signal ends the drain.
const SECOND_SIGNAL: &str = "second signal: exiting without waiting for in-flight requests";

/// How long after the grace period a worker may take to close its remaining
/// connections before the process exits without it.
const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Start-up notes on settings a newcomer may not expect (logged before listening).
fn announce(
    config: &proxy::Config,
    factories: &[std::sync::Arc<dyn proxy::plugin::PluginFactory>],
) {
    let routes = proxy::plugin::web_route::NAME;
    if !config.enable_web_server && factories.iter().any(|f| f.name() == routes) {
        tracing::warn!(
            "{routes} is loaded but answers nothing without --enable-web-server (as in proxy.py)"
        );
    }
    if config.pac_file_is_literal {
        tracing::warn!("--pac-file names no existing file: serving its value as literal PAC text");
    }
    if let Some(n) = config.num_acceptors {
        tracing::info!(
            "--num-acceptors {n} ignored: every worker accepts for itself (--num-workers)"
        );
    }
    if !config.ignored_modes.is_empty() {
        tracing::info!(
            "{} ignored: every worker is an event loop that accepts for itself (--num-workers)",
            config.ignored_modes.join(", ")
        );
    }
}

/// proxy.py's `--open-file-limit`: raise the soft limit when `soft < limit <= hard`.
fn raise_open_file_limit(limit: u64) {
    let resource = rlimit::Resource::NOFILE;
    match resource.get() {
        Ok((soft, hard)) if soft < limit && limit <= hard => {
            if let Err(e) = resource.set(limit, hard) {
                tracing::warn!("cannot raise the open file limit to {limit}: {e}");
            }
        }
        Ok((soft, hard)) if soft < limit => {
            tracing::warn!(
                "--open-file-limit {limit} is above the hard limit {hard}; keeping {soft}"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open file limit: {e}"),
    }
}

/// Prints help, version or an error once, and returns its exit status.
fn exit_with(err: &proxy::cli::CliError) -> ExitCode {
    err.print();
    ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(1))
}
