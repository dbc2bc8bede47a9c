//! Guest kernels under qemu: Debian's kernels from the archive ([`kernel`]) and the
//! initramfs a guest boots into ([`initramfs`]). `cargo xtask vm-test` runs rsttrace in such
//! guests; [`crate::guest`] boots one as a remote host on a tap link.

pub mod initramfs;
pub mod kernel;
