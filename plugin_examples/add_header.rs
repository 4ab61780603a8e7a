//! A plugin that adds a header to every response the proxy relays.
//!
//! # Run
//! ```sh
//! cargo run --release --example add_header -- --port 8899
//! ```
//! # Expected
//! ```sh
//! curl -sI -x http://127.0.0.1:8899 http://example.com/ | grep -i x-proxied-by
//! # X-Proxied-By: proxy (add_header example)
//! ```
//! Copy this file, rename the types, and change `on_response` (or implement
//! `on_request`, see `block_hosts.rs`). Hooks run on the worker thread: never block.

use std::process::ExitCode;
use std::sync::Arc;

use proxy::http::ResponseHead;
use proxy::plugin::{Flow, Plugin, PluginError, PluginFactory, RequestCx};

/// The header this example adds.
pub const HEADER: (&str, &[u8]) = ("X-Proxied-By", b"proxy (add_header example)");

/// Adds [`HEADER`] to each response; one instance per client connection.
pub struct AddHeader;

impl Plugin for AddHeader {
    fn name(&self) -> &'static str {
        "add_header"
    }

    fn on_response(
        &mut self,
        _cx: &RequestCx<'_>,
        res: &mut ResponseHead,
    ) -> Result<Flow, PluginError> {
        res.append(HEADER.0, HEADER.1);
        Ok(Flow::Continue)
    }
}

/// Builds an [`AddHeader`] for each new client connection.
pub struct AddHeaderFactory;

impl PluginFactory for AddHeaderFactory {
    fn name(&self) -> &'static str {
        "add_header"
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(AddHeader)
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
    match proxy::start_with(config, vec![Arc::new(AddHeaderFactory)]) {
        Ok(handle) => {
            println!("add_header example listening on {}", handle.local_addr());
            handle.wait();
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("proxy: error: {err}");
            ExitCode::FAILURE
        }
    }
}
