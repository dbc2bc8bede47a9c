//! rsttrace kernel programs: classic tracepoints only, so they load on kernels without
//! kprobes or fentry (lockdown, CONFIG_KPROBES=n).
//!
//! One module per kind of probe (`programs/`): TCP resets and socket owners, process life
//! (signals, exits, forks, OOM kills), socket calls failing with ECONNRESET, and the syscall
//! tracepoints older kernels need instead. Each program sends one event type of
//! `tracer_ebpf::event`; tracepoint records whose layout varies between kernels are copied
//! verbatim and decoded in user space, and every offset comes from `CONFIG`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for the host only by workspace-wide tooling (clippy --workspace); the real
    // programs exist for target_arch = "bpf".
}

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
