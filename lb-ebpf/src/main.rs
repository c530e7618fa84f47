//! Kernel programs of the load balancer.
//!
//! The socket hooks translate a connect/sendmsg to a frontend (ClusterIP:port/proto) into a
//! connect/sendmsg to one of its backends, before any packet exists; the reply-side hooks
//! (recvmsg, getpeername) show the frontend back to the application. Every hook goes through the
//! same `lb` module: frontend lookup → slot choice → backend fetch. The TC programs (`tc`) do
//! the same per packet for traffic from outside the node, with a conntrack table.
#![no_std]
#![no_main]

mod conntrack;
mod lb;
mod log;
mod maps;
mod nat;
mod packet;
mod sock;
mod source_range;
mod stats;
mod tc;
mod xdp;

// Only on the BPF target: a host build (`cargo clippy --workspace`) gets std through the agent's
// features of lb-common, and std brings its own.
#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
