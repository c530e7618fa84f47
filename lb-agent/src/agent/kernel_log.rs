//! The kernel programs' own log (aya-log, switched on per Service port by `lb-agent log on`),
//! printed as this agent's log lines.
use tracing::warn;

/// Aborts a background task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prints the kernel programs' log records as they arrive (through the `log` → `tracing`
/// bridge), until the task is aborted.
pub async fn forward_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let registered = crate::sys::async_fd::readable(logger);
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the kernel log");
            return;
        }
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                warn!(error = %e, "kernel log stopped");
                return;
            }
        }
    }
}
