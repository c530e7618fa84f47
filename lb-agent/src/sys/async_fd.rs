//! Kernel file descriptors polled by the tokio runtime (the kernel log's ring buffer, the
//! rtnetlink socket).
use std::os::fd::AsRawFd;

use tokio::io::{Interest, unix::AsyncFd};

/// Registers `inner` for readiness to read. The `AsyncFd` owns `inner`, so its fd stays open
/// while registered and is closed only after deregistering.
pub fn readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // Safety: the fd belongs to `inner`, which the AsyncFd owns from here on (see above).
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(Into::into)
}
