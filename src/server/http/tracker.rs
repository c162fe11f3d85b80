//! The set of open connections: enforces the connection cap, lets graceful shutdown close the
//! idle ones (no request in progress, so nothing is lost) and wait for the others to finish.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::net::Shutdown;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub(crate) struct ConnTracker {
    table: Mutex<Table>,
    /// Notified whenever a connection closes.
    closed: Condvar,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Slot>>,
}

struct Slot {
    fd: RawFd,
    /// Waiting for the next request with nothing buffered.
    idle: AtomicBool,
}

/// A connection's place in the tracker; dropping it frees the place. It must be dropped before
/// the socket is closed (see [`shutdown_fd`]), which `ConnIo` guarantees by field order.
pub(crate) struct Registration {
    tracker: Arc<ConnTracker>,
    id: u64,
    slot: Arc<Slot>,
}

impl Registration {
    /// SeqCst pairs with the shutdown flag: a connection that marks itself idle and then
    /// checks the flag, against a shutdown that sets the flag and then scans for idle
    /// connections, cannot both miss each other.
    pub(crate) fn set_idle(&self, idle: bool) {
        self.slot.idle.store(idle, Ordering::SeqCst);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.tracker.lock().open.remove(&self.id);
        self.tracker.closed.notify_all();
    }
}

impl ConnTracker {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(ConnTracker { table: Mutex::new(Table::default()), closed: Condvar::new() })
    }

    /// A place for the connection on `fd`, or `None` when `max_open` are already open.
    pub(crate) fn register(self: &Arc<Self>, fd: RawFd, max_open: usize) -> Option<Registration> {
        let mut table = self.lock();
        if table.open.len() >= max_open {
            return None;
        }
        let id = table.next_id;
        table.next_id += 1;
        let slot = Arc::new(Slot { fd, idle: AtomicBool::new(false) });
        table.open.insert(id, slot.clone());
        Some(Registration { tracker: self.clone(), id, slot })
    }

    pub(crate) fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Ends the reading side of every idle connection: its blocked read returns end-of-stream
    /// and it closes. Busy connections are left to finish their request.
    pub(crate) fn close_idle(&self) {
        for slot in self.lock().open.values() {
            if slot.idle.load(Ordering::SeqCst) {
                shutdown_fd(slot.fd, Shutdown::Read);
            }
        }
    }

    /// Ends both sides of every connection: blocked reads see end-of-stream, writes fail, and
    /// handlers watching for a disconnect see one.
    pub(crate) fn close_all(&self) {
        for slot in self.lock().open.values() {
            shutdown_fd(slot.fd, Shutdown::Both);
        }
    }

    /// Blocks (an OS thread, not a coroutine) until at most `max_open` connections are open or
    /// `deadline` passes; true if the count was reached.
    pub(crate) fn wait_until_at_most(&self, max_open: usize, deadline: Instant) -> bool {
        let mut table = self.lock();
        while table.open.len() > max_open {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            table = self.closed.wait_timeout(table, left).unwrap_or_else(|poison| poison.into_inner()).0;
        }
        true
    }

    /// Nothing panics while holding this lock, but a poisoned table is still a valid table.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

fn shutdown_fd(fd: RawFd, how: Shutdown) {
    // SAFETY: `fd` is the socket of a connection still in the table, read under the table
    // lock; a connection leaves the table (under the same lock) before its socket is closed,
    // so the descriptor is open and not reused. ManuallyDrop keeps this borrowed view from
    // closing it.
    let socket = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    // It may already be shut down by the peer; nothing to do about an error here.
    let _ = socket.shutdown(how);
}
