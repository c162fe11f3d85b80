//! SIGTERM starts the graceful shutdown. In its own test binary because it signals the whole
//! process.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use kiln::server::http::{shutdown_on_signals, HttpConfig, Request, Responder, Response, Server};

#[test]
fn sigterm_triggers_a_graceful_shutdown() {
    let handler = |_request: Request, responder: &mut Responder<'_>| {
        let _ = responder.send(Response::text(200, "ok"));
    };
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), HttpConfig::default(), handler).unwrap();
    let shutdown = server.shutdown_handle();
    // Installed before it returns, so the signal below cannot hit the default action.
    shutdown_on_signals(shutdown.clone()).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || done_tx.send(server.wait()));

    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    let report = done_rx.recv_timeout(Duration::from_secs(10)).expect("the server stopped after SIGTERM");
    assert_eq!(report.unfinished_connections, 0);
    assert!(shutdown.is_triggered());
}
