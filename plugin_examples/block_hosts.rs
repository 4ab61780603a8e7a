//! A plugin that refuses requests to listed hosts with a 403, for plain HTTP and for
//! CONNECT alike, before any upstream is contacted.
//!
//! # Run
//! ```sh
//! cargo run --release --example block_hosts -- --port 8899
//! ```
//! # Expected
//! ```sh
//! curl -si -x http://127.0.0.1:8899 http://ads.example/ | head -1
//! # HTTP/1.1 403 Forbidden
//! curl -s -x http://127.0.0.1:8899 https://ads.example/   # CONNECT refused: curl exits 56
//! ```
//! proxy.py's `FilterByUpstreamHostPlugin` does the same with a 418; this one shows how
//! to answer with your own reply.

use std::process::ExitCode;
use std::sync::Arc;

use proxy::http::{RequestHead, Target};
use proxy::plugin::{Flow, Plugin, PluginError, PluginFactory, Reply, RequestCx};

/// Hosts this example refuses (exact names, lower case).
pub const BLOCKED: &[&str] = &["ads.example", "tracker.example"];

/// Answers 403 for [`BLOCKED`] hosts; one instance per client connection.
pub struct BlockHosts;

impl Plugin for BlockHosts {
    fn name(&self) -> &'static str {
        "block_hosts"
    }

    fn on_request(
        &mut self,
        _cx: &RequestCx<'_>,
        _req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        // Requests addressed to the proxy itself (origin-form) have no upstream host.
        let Some(host) = target.upstream_host() else {
            return Ok(Flow::Continue);
        };
        if BLOCKED.contains(&host) {
            let body = format!("403 Forbidden: {host} is blocked by this proxy\n");
            return Ok(Flow::Respond(Reply::new(
                403,
                &[("Content-Type", "text/plain; charset=utf-8")],
                body.as_bytes(),
                false,
            )));
        }
        Ok(Flow::Continue)
    }
}

/// Builds a [`BlockHosts`] for each new client connection.
pub struct BlockHostsFactory;

impl PluginFactory for BlockHostsFactory {
    fn name(&self) -> &'static str {
        "block_hosts"
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(BlockHosts)
    }
}

/// The proxy's command line, with this plugin after the configured ones.
#[allow(dead_code)]
fn main() -> ExitCode {
    let config = match proxy::Config::from_args(std::env::args_os()) {
        Ok(config) => config,
        Err(err) => {
            err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(1));
        }
    };
    match proxy::start_with(config, vec![Arc::new(BlockHostsFactory)]) {
        Ok(handle) => {
            println!("block_hosts example listening on {}", handle.local_addr());
            handle.wait();
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("proxy: error: {err}");
            ExitCode::FAILURE
        }
    }
}
