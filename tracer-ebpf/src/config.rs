//! Kernel facts resolved by user space at start (tracefs formats, BTF) and frozen into the
//! programs' read-only data, so the verifier sees them as constants.
use crate::event::EventKind;

/// Offset value meaning "this kernel has no such field".
pub const NO_OFFSET: u32 = u32::MAX;

/// Kernel facts resolved by user space at start (tracefs formats, BTF) and frozen into the
/// programs' read-only data. `NO_OFFSET` marks what this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bytes of each tracepoint record to copy, by [`EventKind`] value (0: do not copy).
    pub record_len: [u32; EventKind::COUNT],
    pub send_reset_skaddr: u32,
    pub recv_reset_skaddr: u32,
    pub signal_sig: u32,
    /// `group_dead` in sched:sched_process_exit (newer kernels).
    pub exit_group_dead: u32,
    pub syscall_ret: u32,
    /// `fd` in syscalls:sys_enter_{recvfrom,readv,...,listen} records.
    pub sys_enter_fd: u32,
    /// Offsets in struct pt_regs of the first four syscall arguments (x86_64: di, si, dx,
    /// r10). Known: socket syscall exits read their arguments from the task's saved
    /// registers (bpf_task_pt_regs, 5.15+) and no enter hook runs on every syscall.
    pub regs_arg: [u32; 4],
    /// Force a reader wake-up once this many bytes wait in the ring buffer; below it,
    /// samples are submitted without waking rsttrace, which drains on a short timer
    /// (a wake-up per sample costs more than the sample itself in a reset storm).
    pub ring_wakeup_bytes: u32,
    /// `level`, `optname`, `optval` in syscalls:sys_enter_getsockopt.
    pub getsockopt_level: u32,
    pub getsockopt_optname: u32,
    pub getsockopt_optval: u32,
    // struct offsets from BTF
    pub task_flags: u32,
    pub task_exit_code: u32,
    pub task_cgroups: u32,
    /// offsetof(css_set, subsys) + memory_cgrp_id * sizeof(void *)
    pub css_set_memcg: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    pub unix_peer: u32,
    pub unix_addr: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// sock.sk_socket: NULL once the socket is orphaned (closed by its process); the
    /// socket's inode number through it: offsetof(socket_alloc, vfs_inode) +
    /// offsetof(inode, i_ino).
    pub sock_socket: u32,
    pub socket_ino: u32,
    /// `skbaddr` in tcp:tcp_send_reset (the answered segment, NULL for active resets).
    pub send_reset_skbaddr: u32,
    /// tcp_sock.snd_nxt / rcv_nxt.
    pub tcp_snd_nxt: u32,
    pub tcp_rcv_nxt: u32,
    /// sock.__sk_common.skc_net.net, and net.ns.inum behind it.
    pub sock_net: u32,
    pub net_ns_inum: u32,
    /// sk_buff.head, sk_buff.transport_header, sk_buff.dev, net_device.nd_net.net.
    pub skb_head: u32,
    pub skb_transport_header: u32,
    pub skb_dev: u32,
    pub dev_net: u32,
    /// sock.sk_err, sock.sk_protocol, and the addresses and ports of __sk_common.
    pub sock_err: u32,
    pub sock_err_soft: u32,
    /// sock.__sk_common.skc_state; sock.sk_error_queue.prev (its newest skb) and .qlen,
    /// sk_buff.cb, and where the queued error's errno sits in that cb
    /// (sock_exterr_skb.ee.ee_errno).
    pub sock_state: u32,
    pub sock_errqueue_tail: u32,
    pub sock_errqueue_len: u32,
    pub skb_cb: u32,
    pub exterr_errno: u32,
    pub sock_protocol: u32,
    pub sock_daddr: u32,
    pub sock_rcv_saddr: u32,
    pub sock_dport: u32,
    pub sock_num: u32,
    pub sock_v6_daddr: u32,
    pub sock_v6_rcv_saddr: u32,
}

impl Config {
    pub const EMPTY: Config = Config {
        record_len: [0; EventKind::COUNT],
        send_reset_skaddr: NO_OFFSET,
        recv_reset_skaddr: NO_OFFSET,
        signal_sig: NO_OFFSET,
        exit_group_dead: NO_OFFSET,
        syscall_ret: NO_OFFSET,
        sys_enter_fd: NO_OFFSET,
        regs_arg: [NO_OFFSET; 4],
        ring_wakeup_bytes: 0,
        getsockopt_level: NO_OFFSET,
        getsockopt_optname: NO_OFFSET,
        getsockopt_optval: NO_OFFSET,
        task_flags: NO_OFFSET,
        task_exit_code: NO_OFFSET,
        task_cgroups: NO_OFFSET,
        css_set_memcg: NO_OFFSET,
        css_cgroup: NO_OFFSET,
        cgroup_kn: NO_OFFSET,
        kn_id: NO_OFFSET,
        task_files: NO_OFFSET,
        files_fdt: NO_OFFSET,
        fdt_max_fds: NO_OFFSET,
        fdt_fd: NO_OFFSET,
        file_private_data: NO_OFFSET,
        socket_sk: NO_OFFSET,
        sock_family: NO_OFFSET,
        unix_peer: NO_OFFSET,
        unix_addr: NO_OFFSET,
        unix_address_len: NO_OFFSET,
        unix_address_name: NO_OFFSET,
        sock_socket: NO_OFFSET,
        socket_ino: NO_OFFSET,
        send_reset_skbaddr: NO_OFFSET,
        tcp_snd_nxt: NO_OFFSET,
        tcp_rcv_nxt: NO_OFFSET,
        sock_net: NO_OFFSET,
        net_ns_inum: NO_OFFSET,
        skb_head: NO_OFFSET,
        skb_transport_header: NO_OFFSET,
        skb_dev: NO_OFFSET,
        dev_net: NO_OFFSET,
        sock_err: NO_OFFSET,
        sock_err_soft: NO_OFFSET,
        sock_state: NO_OFFSET,
        sock_errqueue_tail: NO_OFFSET,
        sock_errqueue_len: NO_OFFSET,
        skb_cb: NO_OFFSET,
        exterr_errno: NO_OFFSET,
        sock_protocol: NO_OFFSET,
        sock_daddr: NO_OFFSET,
        sock_rcv_saddr: NO_OFFSET,
        sock_dport: NO_OFFSET,
        sock_num: NO_OFFSET,
        sock_v6_daddr: NO_OFFSET,
        sock_v6_rcv_saddr: NO_OFFSET,
    };
}
