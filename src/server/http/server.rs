//! The listener: binds, accepts on a coroutine, gives each connection its own coroutine (or a
//! 503 when over the connection cap), and drains on shutdown.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::HttpConfig;
use super::conn_io::ConnIo;
use super::connection::serve;
use super::error::HttpError;
use super::handler::Handler;
use super::response::write_layer_error;
use super::shutdown::{ShutdownHandle, ShutdownState};
use super::tracker::ConnTracker;

/// After an accept error (typically out of descriptors), wait this long rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// Longest wait for our own wake-up connection to the listener.
const WAKE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What every connection of one server shares, read-only but for the tracker and the flag.
pub(crate) struct Shared {
    pub(crate) config: HttpConfig,
    pub(crate) handler: Box<dyn Handler>,
    pub(crate) tracker: Arc<ConnTracker>,
    pub(crate) shutdown: ShutdownState,
    /// Where to connect to wake the accept loop.
    wake_addr: SocketAddr,
}

impl Shared {
    pub(crate) fn begin_shutdown(&self) {
        if self.shutdown.fire() {
            self.tracker.close_idle();
        }
    }

    /// Ends the accept loop: the listener closes and new connections are refused.
    fn stop_accepting(&self) {
        if !self.shutdown.stop_accepting() {
            return;
        }
        // The accept loop is parked in accept(); a connection of our own wakes it to see the
        // flag. may's connect parks a coroutine, or blocks a plain thread, as the caller is.
        if let Err(err) = may::net::TcpStream::connect_timeout(&self.wake_addr, WAKE_CONNECT_TIMEOUT) {
            tracing::warn!(%err, "cannot wake the accept loop; it stops at the next connection");
        }
    }
}

/// How the drain went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still busy when the drain timeout passed, closed under their handlers.
    pub unfinished_connections: usize,
}

/// A running HTTP server. Dropping it starts a shutdown and closes the listener; [`Server::wait`]
/// waits for a shutdown and runs the drain.
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept_loop: Option<may::coroutine::JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port; see [`local_addr`](Server::local_addr)) and starts
    /// accepting. Returns once the listener is bound, so a client may connect at once.
    ///
    /// Sets may's default coroutine stack size to `config.coroutine_stack_bytes` (process-wide):
    /// may recycles coroutines of the default size through a pool, so making ours the default
    /// saves an mmap per connection.
    pub fn bind(addr: SocketAddr, config: HttpConfig, handler: impl Handler) -> Result<Server, HttpError> {
        config.validate()?;
        let stack_words = config.coroutine_stack_words();
        may::config().set_stack_size(stack_words);

        // Bound with std, not may::net::TcpListener::bind: may sets SO_REUSEPORT, under which a
        // second server on the same port silently shares its traffic instead of failing.
        let bind_error = |source| HttpError::Bind { addr: addr.to_string(), source };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        let local_addr = std_listener.local_addr().map_err(bind_error)?;
        // SAFETY: the descriptor comes from `into_raw_fd`, so it is an open listening socket
        // that nothing else owns. (may panics if it cannot register the socket with its
        // poller, which happens only when the process is out of resources at start-up.)
        let listener = unsafe { may::net::TcpListener::from_raw_fd(std_listener.into_raw_fd()) };

        let shared = Arc::new(Shared {
            config,
            handler: Box::new(handler),
            tracker: ConnTracker::new(),
            shutdown: ShutdownState::new(),
            wake_addr: wake_addr(local_addr),
        });
        let accept_shared = shared.clone();
        let builder = may::coroutine::Builder::new().name("http-accept".to_owned()).stack_size(stack_words);
        // SAFETY: may marks spawning unsafe because a coroutine may resume on another thread
        // after it blocks, which breaks references to thread-locals held across the block. The
        // accept loop and connection code hold none; `Handler` documents the same rule.
        let accept_loop =
            unsafe { builder.spawn(move || accept_loop(listener, accept_shared)) }.map_err(HttpError::Spawn)?;
        tracing::info!(%local_addr, "HTTP server listening");
        Ok(Server { shared, local_addr, accept_loop: Some(accept_loop) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { shared: self.shared.clone() }
    }

    /// Connections open now (for metrics).
    /// Blocks the calling thread until at most `at_most` connections are open, or `timeout`
    /// passes; true if reached. For tests and health checks.
    pub fn wait_for_open_connections(&self, at_most: usize, timeout: Duration) -> bool {
        self.shared.tracker.wait_until_at_most(at_most, Instant::now() + timeout)
    }

    /// Blocks the calling OS thread (call it from `main`, not from a coroutine) until a
    /// shutdown is triggered, then until running requests finish or the drain timeout passes.
    /// Past it, handlers waiting through [`Responder::wait_for`](super::Responder::wait_for) are
    /// told to give up (a stream ends with an error event) and get a linger timeout to do so;
    /// then the remaining connections are closed under their handlers.
    pub fn wait(mut self) -> ShutdownReport {
        let started = self.shared.shutdown.wait_fired();
        let tracker = &self.shared.tracker;
        let config = &self.shared.config;
        let drained = tracker.wait_until_at_most(0, started + config.drain_timeout);
        self.shared.stop_accepting();
        if let Some(accept_loop) = self.accept_loop.take() {
            // Err only if the accept loop panicked, and it then no longer accepts either.
            let _ = accept_loop.join();
        }
        // A connection accepted between the drain and the listener closing is cut like the rest.
        let unfinished = tracker.open();
        if drained && unfinished == 0 {
            tracing::info!("all connections drained");
            return ShutdownReport { unfinished_connections: 0 };
        }
        tracing::warn!(unfinished, "drain timeout passed; cutting the remaining requests");
        self.shared.shutdown.cut();
        if !tracker.wait_until_at_most(0, Instant::now() + config.linger_timeout) {
            tracker.close_all();
            // They notice at their next read, write or disconnect check; a handler blocked on
            // something else is not waited for beyond this.
            tracker.wait_until_at_most(0, Instant::now() + config.linger_timeout);
        }
        ShutdownReport { unfinished_connections: unfinished }
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::wait`] has no one to run its drain: it stops accepting at
    /// once and running requests finish on their own.
    fn drop(&mut self) {
        self.shared.begin_shutdown();
        self.shared.stop_accepting();
    }
}

/// A listener on all interfaces is woken through loopback; one on a given address through it.
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

fn accept_loop(listener: may::net::TcpListener, shared: Arc<Shared>) {
    while !shared.shutdown.accepting_stopped() {
        match listener.accept() {
            // Checked again: this may be the wake-up connection, or a client that raced it.
            Ok(_) if shared.shutdown.accepting_stopped() => break,
            Ok((stream, peer)) => admit(stream, peer, &shared),
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                may::coroutine::sleep(ACCEPT_BACKOFF);
            }
        }
    }
    tracing::info!("stopped accepting connections");
    // Dropping the listener here makes new connections fail at once.
}

/// Gives the connection its coroutine, or a 503 when the cap is reached.
fn admit(stream: may::net::TcpStream, peer: std::net::SocketAddr, shared: &Arc<Shared>) {
    let registration = shared.tracker.register(stream.as_raw_fd(), shared.config.max_connections);
    let over_capacity = registration.is_none();
    let io = ConnIo::new(registration, stream);
    let connection_shared = shared.clone();
    let builder = may::coroutine::Builder::new().stack_size(shared.config.coroutine_stack_words());
    // SAFETY: as for the accept loop: no thread-local reference is held across a block.
    let spawned = unsafe {
        builder.spawn(move || {
            if over_capacity {
                refuse_over_capacity(io, peer, &connection_shared);
            } else {
                serve(io, peer, &connection_shared);
            }
        })
    };
    if let Err(err) = spawned {
        // The closure, and the connection with it, was dropped: the client sees a close.
        tracing::error!(%peer, %err, "cannot start a connection coroutine");
    }
}

/// Answers 503 without reading the request (the linger in `close` drains it).
fn refuse_over_capacity(mut io: ConnIo, peer: SocketAddr, shared: &Shared) {
    tracing::warn!(%peer, limit = shared.config.max_connections, "connection cap reached; answering 503");
    if io.configure(shared.config.write_timeout).is_err() {
        return;
    }
    let message = "the server has too many open connections; retry later";
    write_layer_error(io.out_mut(), 503, message, false);
    io.close(shared.config.linger_timeout);
}
