//! One worker: an OS thread running a current-thread runtime and a `LocalSet`, with its
//! own listeners, upstream pool and connection tasks. Nothing here is shared with other
//! workers except the read-only `Arc<Config>`.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::LocalSet;

use crate::config::Config;
use crate::plugin::PluginFactory;
use crate::proxy::{serve_connection, Shared};

/// Runs worker `id` until shutdown has been signalled and its connections have drained
/// (or the grace period is over). Reports start-up success or failure on `ready`.
#[expect(
    clippy::too_many_arguments,
    reason = "what one worker thread is started with; moved into the thread as is"
)]
pub fn run(
    id: usize,
    config: Arc<Config>,
    listen_addrs: Arc<[SocketAddr]>,
    factories: Arc<[Arc<dyn PluginFactory>]>,
    tls: Arc<crate::tls::TlsContext>,
    listeners: Vec<std::net::TcpListener>,
    shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        // Dropped at the end of this block, inside the runtime its timers belong to.
        let _timers = crate::conn::io::IdleTimers::begin();
        let mut async_listeners = Vec::with_capacity(listeners.len());
        for listener in listeners {
            match TcpListener::from_std(listener) {
                Ok(listener) => async_listeners.push(listener),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        let grace = config.grace_period;
        let flush_every = config.script_flush_interval;
        let shared = Rc::new(Shared::new(config, listen_addrs, factories, tls, id));
        // Every connection task holds a clone of `drain_tx`; `recv` returns `None` once
        // the last one is gone (mini-redis' shutdown-complete trick).
        let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
        for listener in async_listeners {
            tokio::task::spawn_local(accept_loop(listener, Rc::clone(&shared), drain_tx.clone()));
        }
        drop(drain_tx);
        let sweeper = tokio::task::spawn_local(sweep_pool(Rc::clone(&shared)));
        // Scripts' `flush` handlers, besides the last one at the end.
        let flusher = flush_every
            .map(|every| tokio::task::spawn_local(crate::plugin::lua::flush_every(every)));
        wait_for_shutdown(shutdown).await;
        // From here on this worker's tasks see the signal without asking the channel.
        shared.stop.set();
        tracing::debug!(worker = id, "draining");
        if tokio::time::timeout(grace, drain_rx.recv()).await.is_err() {
            tracing::warn!(
                worker = id,
                "grace period over; closing the remaining connections"
            );
        }
        sweeper.abort();
        if let Some(flusher) = flusher {
            flusher.abort();
        }
        shared.pool.clear();
    });
    // Dropping the runtime cancels whatever is still running (past the grace period).
    // Scripts' `done` handlers run once per VM of this worker.
    crate::plugin::lua::done_on_this_thread();
}

async fn accept_loop(listener: TcpListener, shared: Rc<Shared>, drain: mpsc::Sender<()>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stop.wait() => break,
        };
        match accepted {
            Ok((stream, addr)) => spawn_connection(stream, addr, &shared, &drain),
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning on accept.
                if crate::error::is_out_of_resources(&e) {
                    // Idle upstream connections are the descriptors that can go at once.
                    let freed = shared.pool.len();
                    shared.pool.clear();
                    tracing::warn!(error = %e, freed, "accept failed; closed the idle upstream connections, backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
            }
        }
    }
    drain_accept_queue(listener, &shared, &drain);
}

fn spawn_connection(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    shared: &Rc<Shared>,
    drain: &mpsc::Sender<()>,
) {
    let shared = Rc::clone(shared);
    let guard = drain.clone();
    tokio::task::spawn_local(async move {
        serve_connection(stream, addr, &shared).await;
        drop(guard);
    });
}

/// On shutdown: takes every connection the kernel has already completed into the
/// listener's accept queue and serves it (its requests are answered with `Connection:
/// close`), then closes the listener. Dropping the listener with connections still
/// queued would reset them: their clients had connected, so each would lose a request.
///
/// A connection completed between the last `accept` and the close is still reset,
/// unless the kernel migrates it to another listener of the `SO_REUSEPORT` group
/// (`net.ipv4.tcp_migrate_req = 1`, Linux 5.14+; README, "Zero-downtime upgrade").
fn drain_accept_queue(listener: TcpListener, shared: &Rc<Shared>, drain: &mpsc::Sender<()>) {
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            tracing::debug!(error = %e, "cannot drain the accept queue");
            return;
        }
    };
    let mut drained = 0_usize;
    loop {
        // Non-blocking (tokio set it): WouldBlock means the queue is empty.
        let accepted = listener.accept().and_then(|(stream, addr)| {
            stream.set_nonblocking(true)?;
            Ok((tokio::net::TcpStream::from_std(stream)?, addr))
        });
        match accepted {
            Ok((stream, addr)) => {
                drained += 1;
                spawn_connection(stream, addr, shared, drain);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "accept failed while draining; closing the listener");
                break;
            }
        }
    }
    tracing::debug!(worker = shared.worker, drained, "listener closed");
}

async fn sweep_pool(shared: Rc<Shared>) {
    let mut tick = tokio::time::interval(shared.pool.sweep_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.pool.sweep();
    }
}

/// Resolves once shutdown has been signalled (or the signal's sender is gone).
pub async fn wait_for_shutdown(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
