//! The rtnetlink requests [`super`] makes: a link dump and the id a namespace gives another.
//! Both answer for the network namespace of the calling thread (the socket's namespace
//! is fixed at creation), so callers enter a namespace first with [`in_namespace`].
use std::{
    fs::File,
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long one datagram from the kernel may take, and a whole exchange, before giving up.
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// Datagrams one dump may span; a host with tens of thousands of links stays well below.
const MAX_DATAGRAMS: usize = 4096;
const RECV_BUFFER: usize = 64 * 1024;

/// One network interface as RTM_GETLINK describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    pub index: u32,
    pub name: Option<String>,
    pub veth: bool,
    /// The peer's ifindex (IFLA_LINK); for a veth, in the namespace `peer_nsid` names.
    pub peer_index: Option<u32>,
    /// IFLA_LINK_NETNSID: the id this namespace gave the peer's namespace. Absent when the
    /// peer lives in the same namespace (rtnl_fill_link_netnsid, net/core/rtnetlink.c).
    pub peer_nsid: Option<i32>,
}

/// Runs `work` on a short-lived thread that first enters the namespace `netns` (None: stays
/// in the caller's). setns(CLONE_NEWNET) moves only the calling thread, so the rest of
/// rsttrace never changes namespace; the thread ends with `work`.
pub(super) fn in_namespace<T: Send + 'static>(
    netns: Option<File>,
    work: impl FnOnce() -> Option<T> + Send + 'static,
) -> Option<T> {
    let worker = thread::Builder::new()
        .name("rsttrace-netns".into())
        .spawn(move || {
            if let Some(netns) = netns {
                // SAFETY: the fd is open for the whole call; setns has no memory effects.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
            }
            work()
        })
        .ok()?;
    worker.join().ok().flatten()
}

/// A route netlink socket in the calling thread's namespace, whose reads time out.
pub(super) fn open() -> Option<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE).ok()?;
    socket.bind_auto().ok()?;
    socket.connect(&SocketAddr::new(0, 0)).ok()?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: libc::suseconds_t::try_from(REPLY_TIMEOUT.as_micros()).ok()?,
    };
    // SAFETY: timeout is a valid timeval and the length says so.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).ok()?,
        )
    };
    (set == 0).then_some(socket)
}

/// Every link of the socket's namespace. None when the dump fails or is cut short, so a
/// partial table is never taken for the whole.
pub(super) fn links(socket: &Socket) -> Option<Vec<Link>> {
    let replies = exchange(
        socket,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        true,
    )?;
    Some(
        replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(message) => Some(link_from(message)),
                _ => None,
            })
            .collect(),
    )
}

fn link_from(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: None,
        veth: false,
        peer_index: None,
        peer_nsid: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = Some(name),
            LinkAttribute::Link(index) => link.peer_index = Some(index),
            LinkAttribute::LinkNetNsId(id) => link.peer_nsid = Some(id),
            LinkAttribute::LinkInfo(infos) => {
                link.veth = infos
                    .iter()
                    .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    // Kernels before 5.12 leave IFLA_LINK out when it equals the link's own ifindex, which
    // a veth pair between two namespaces often has (nla_put_iflink, net/core/rtnetlink.c).
    if link.veth && link.peer_nsid.is_some() && link.peer_index.is_none() {
        link.peer_index = Some(link.index);
    }
    link
}

/// The id the socket's namespace gives the namespace open as `other` (RTM_GETNSID with
/// NETNSA_FD). The kernel only looks this up (peernet2id, net/core/net_namespace.c): a
/// namespace it has no id for answers -1, and none is allocated by asking.
pub(super) fn nsid_of(socket: &Socket, other: &File) -> Option<i32> {
    let fd = u32::try_from(other.as_raw_fd()).ok()?;
    let mut request = NsidMessage::default();
    request.attributes.push(NsidAttribute::Fd(fd));
    let replies = exchange(socket, RouteNetlinkMessage::GetNsId(request), false)?;
    replies.into_iter().find_map(|reply| match reply {
        RouteNetlinkMessage::NewNsId(message) => {
            message.attributes.into_iter().find_map(|a| match a {
                NsidAttribute::Id(id) if id >= 0 => Some(id),
                _ => None,
            })
        }
        _ => None,
    })
}

/// Sends one request and collects its replies: until NLMSG_DONE for a dump, the first
/// datagram otherwise. None on an error reply, a timeout or a message that does not parse.
fn exchange(
    socket: &Socket,
    request: RouteNetlinkMessage,
    dump: bool,
) -> Option<Vec<RouteNetlinkMessage>> {
    // Replies to an earlier request that timed out on this socket carry another number.
    static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut message = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    message.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    message.header.sequence_number = sequence;
    message.finalize();
    let mut out = vec![0; message.buffer_len()];
    message.serialize(&mut out);
    socket.send(&out, 0).ok()?;

    let started = Instant::now();
    let mut replies = Vec::new();
    let mut buffer = Vec::with_capacity(RECV_BUFFER);
    for _ in 0..MAX_DATAGRAMS {
        if started.elapsed() > EXCHANGE_TIMEOUT {
            return None;
        }
        buffer.clear();
        // With MSG_TRUNC, netlink_recvmsg (net/netlink/af_netlink.c) returns the datagram's
        // full length, so one too big for the buffer is seen instead of silently cut.
        let size = socket.recv(&mut buffer, libc::MSG_TRUNC).ok()?;
        if size > buffer.len() {
            return None;
        }
        if read_datagram(&buffer, sequence, &mut replies)? || !dump {
            return Some(replies);
        }
    }
    None
}

/// Appends the datagram's messages for `sequence` to `replies`; Some(true) once the
/// exchange is over (NLMSG_DONE or an acknowledgement), None on an error reply or a
/// datagram that does not hold whole messages. A message netlink-packet-route cannot parse
/// (an attribute newer than the crate, say) is left out: only that link stays unknown.
fn read_datagram(
    mut bytes: &[u8],
    sequence: u32,
    replies: &mut Vec<RouteNetlinkMessage>,
) -> Option<bool> {
    let mut over = false;
    while !bytes.is_empty() {
        let length = NetlinkBuffer::new_checked(bytes).ok()?.length() as usize;
        // Netlink messages are 4-byte aligned within a datagram (NLMSG_ALIGN).
        let step = length.checked_add(3)? & !3;
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).ok();
        if let Some(message) = message.filter(|m| m.header.sequence_number == sequence) {
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                NetlinkPayload::Done(_) => over = true,
                NetlinkPayload::Error(error) if error.code.is_none() => over = true,
                NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_) => return None,
                _ => {}
            }
        }
        bytes = bytes.get(step.min(bytes.len())..)?;
    }
    Some(over)
}
