//! Ring buffer bytes -> typed kernel events, using the layouts resolved at start.
//!
//! A malformed or truncated sample is an error the caller reports and skips; nothing
//! here panics on input from the kernel.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{anyhow, bail, Result};
use tracer_ebpf::{
    event::{self, EventKind, Header},
    role, SockOwner, AF_UNIX, PF_EXITING,
};

use crate::{
    kernel::Layouts,
    model::{
        Baseline, Comm, KernelEvent, OomVictim, ProcessExit, ProcessFork, ResetReceived, ResetSent,
        Role, RstSegment, SignalGenerated, SocketError, SocketRefused, Task, UnixListen, UnixPeer,
    },
    record::{Field, RecordFormat},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

pub struct Decoder<'a> {
    layouts: &'a Layouts,
    /// The reset records' fields, found by name once: a storm decodes two per reset, and
    /// looking nine names up in each cost more than the rest of decoding.
    sent: Option<TcpFields<'a>>,
    received: Option<TcpFields<'a>>,
}

/// A copy of the plain-old-data event `T` at the start of `bytes`.
fn read_event<T: Copy>(bytes: &[u8]) -> Result<T> {
    if bytes.len() < size_of::<T>() {
        bail!(
            "truncated sample: {} bytes, expected {}",
            bytes.len(),
            size_of::<T>()
        );
    }
    // SAFETY: length checked above; every event type is repr(C) plain old data (any bit
    // pattern is valid), and read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn current_task(h: &Header) -> Task {
    Task {
        pid: (h.pid_tgid >> 32) as u32,
        tid: h.pid_tgid as u32,
        comm: Comm::from_kernel(&h.comm),
    }
}

/// The valid part of a fixed-size buffer the kernel filled `len` bytes of.
fn valid(buf: &[u8], len: u32) -> &[u8] {
    &buf[..(len as usize).min(buf.len())]
}

impl<'a> Decoder<'a> {
    pub fn new(layouts: &'a Layouts) -> Self {
        Self {
            layouts,
            sent: layouts.get(EventKind::ResetSent).map(TcpFields::find),
            received: layouts.get(EventKind::ResetReceived).map(TcpFields::find),
        }
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<KernelEvent> {
        let header: Header = read_event(bytes)?;
        let kind =
            EventKind::try_from(header.kind).map_err(|k| anyhow!("sample of unknown kind {k}"))?;
        match kind {
            EventKind::ResetSent => self.reset_sent(&read_event(bytes)?),
            EventKind::ResetReceived => self.reset_received(&read_event(bytes)?),
            EventKind::Signal => self.signal(&read_event(bytes)?),
            EventKind::Exit => Ok(exit(&read_event(bytes)?)),
            EventKind::Fork => self.fork(&read_event(bytes)?),
            EventKind::OomVictim => self.oom_victim(&read_event(bytes)?),
            EventKind::SocketError => Ok(socket_error(&read_event(bytes)?)),
            EventKind::UnixReset => Ok(unix_reset(&read_event(bytes)?)),
            EventKind::UnixListen => unix_listen(&read_event(bytes)?),
            EventKind::RstSegment => rst_segment(&read_event(bytes)?),
            EventKind::SocketRefused => refused(&read_event(bytes)?),
        }
    }

    fn record<'r>(&'r self, kind: EventKind, raw: &'r [u8]) -> Result<Record<'r>> {
        match self.layouts.get(kind) {
            Some(format) => Ok(Record { raw, format }),
            None => bail!("no record layout for {kind:?} samples"),
        }
    }

    fn tcp_record<'r>(
        kind: EventKind,
        fields: &'r Option<TcpFields<'a>>,
        raw: &'r [u8],
    ) -> Result<(Record<'r>, &'r TcpFields<'a>)> {
        match fields {
            Some(f) => Ok((
                Record {
                    raw,
                    format: f.format,
                },
                f,
            )),
            None => bail!("no record layout for {kind:?} samples"),
        }
    }

    fn reset_sent(&self, e: &event::ResetSent) -> Result<KernelEvent> {
        let raw = valid(&e.record, e.record_len);
        let (rec, f) = Self::tcp_record(EventKind::ResetSent, &self.sent, raw)?;
        Ok(KernelEvent::ResetSent(ResetSent {
            time_ns: e.header.ktime_ns,
            current: current_task(&e.header),
            current_exiting: e.task_flags & PF_EXITING != 0,
            owner: owner(&e.owner),
            sk: rec.u64_of(&f.skaddr, "skaddr")?,
            reason: rec.opt_u64_of(&f.reason).map(|r| r as u32),
            state: rec.opt_u64_of(&f.state).map(|v| v as u32),
            orphan: e.orphan != 0,
            seq: (e.has_seq != 0).then_some(e.seq),
            netns: (e.netns != 0).then_some(e.netns),
            src: rec.endpoint(&f.src)?,
            dst: rec.endpoint(&f.dst)?,
        }))
    }

    fn reset_received(&self, e: &event::ResetReceived) -> Result<KernelEvent> {
        let raw = valid(&e.record, e.record_len);
        let (rec, f) = Self::tcp_record(EventKind::ResetReceived, &self.received, raw)?;
        Ok(KernelEvent::ResetReceived(ResetReceived {
            time_ns: e.header.ktime_ns,
            current: current_task(&e.header),
            owner: owner(&e.owner),
            owner_role: role(&e.owner),
            sk: rec.u64_of(&f.skaddr, "skaddr")?,
            local: rec.endpoint(&f.src)?,
            remote: rec.endpoint(&f.dst)?,
            sock_cookie: rec.opt_u64_of(&f.sock_cookie),
            rcv_nxt: (e.has_seq != 0).then_some(e.rcv_nxt),
            netns: (e.netns != 0).then_some(e.netns),
        }))
    }

    fn signal(&self, e: &event::SignalGenerated) -> Result<KernelEvent> {
        let rec = self.record(EventKind::Signal, valid(&e.record, e.record_len))?;
        Ok(KernelEvent::Signal(SignalGenerated {
            time_ns: e.header.ktime_ns,
            sender: current_task(&e.header),
            sig: rec.i64("sig")? as i32,
            code: rec.i64("code")? as i32,
            target_pid: rec.i64("pid")? as u32,
            target_comm: rec.string("comm")?,
            result: rec.opt_i64("result").map(|r| r as i32),
        }))
    }

    fn fork(&self, e: &event::ProcessFork) -> Result<KernelEvent> {
        let rec = self.record(EventKind::Fork, valid(&e.record, e.record_len))?;
        Ok(KernelEvent::Fork(ProcessFork {
            time_ns: e.header.ktime_ns,
            parent_pid: rec.i64("parent_pid")? as u32,
            child_pid: rec.i64("child_pid")? as u32,
            parent_tgid: current_task(&e.header).pid,
        }))
    }

    fn oom_victim(&self, e: &event::OomVictim) -> Result<KernelEvent> {
        let rec = self.record(EventKind::OomVictim, valid(&e.record, e.record_len))?;
        Ok(KernelEvent::OomVictim(OomVictim {
            time_ns: e.header.ktime_ns,
            victim_pid: rec.i64("pid")? as u32,
            victim_comm: rec.string("comm").unwrap_or_default(),
            killer: current_task(&e.header),
            memcg_id: e.memcg_id,
        }))
    }
}

fn exit(e: &event::ProcessExit) -> KernelEvent {
    KernelEvent::Exit(ProcessExit {
        time_ns: e.header.ktime_ns,
        task: current_task(&e.header),
        exit_code: e.exit_code,
        memcg_id: e.memcg_id,
        group_dead: match e.group_dead {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        },
    })
}

fn socket_error(e: &event::SocketError) -> KernelEvent {
    KernelEvent::SocketError(SocketError {
        time_ns: e.header.ktime_ns,
        receiver: current_task(&e.header),
        sock: e.sock,
        family: e.family,
        ret: i64::from(e.ret),
        unix: None,
    })
}

fn unix_reset(e: &event::UnixReset) -> KernelEvent {
    KernelEvent::SocketError(SocketError {
        time_ns: e.header.ktime_ns,
        receiver: current_task(&e.header),
        sock: e.sock,
        family: AF_UNIX,
        ret: i64::from(e.ret),
        unix: Some(UnixPeer {
            sock: e.peer_sock,
            owner: owner(&e.peer_owner),
            path: unix_path(valid(&e.path, e.path_len)),
        }),
    })
}

/// An address of `family` held in the first 4 (IPv4) or all 16 bytes.
fn ip(family: u16, bytes: &[u8; 16]) -> Result<IpAddr> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes))),
        other => bail!("unknown address family {other}"),
    }
}

fn rst_segment(e: &event::RstSegment) -> Result<KernelEvent> {
    Ok(KernelEvent::RstSegment(RstSegment {
        time_ns: e.header.ktime_ns,
        cookie: e.cookie,
        local: SocketAddr::new(ip(e.family, &e.daddr)?, e.dport),
        remote: SocketAddr::new(ip(e.family, &e.saddr)?, e.sport),
        seq: e.seq,
        tcp_flags: e.tcp_flags,
        ttl: e.ttl,
        ip_id: (e.family == AF_INET).then_some(e.ip_id),
        ifindex: e.ifindex,
        expected: (e.expected_ttl != 0).then_some(Baseline {
            ttl: e.expected_ttl,
            ifindex: e.expected_ifindex,
            same_flow: e.baseline == tracer_ebpf::event::baseline::FLOW,
        }),
    }))
}

fn refused(e: &event::SocketRefused) -> Result<KernelEvent> {
    Ok(KernelEvent::Refused(SocketRefused {
        time_ns: e.header.ktime_ns,
        sock: e.sock,
        owner: owner(&e.owner),
        owner_role: role(&e.owner),
        error: e.error,
        local: SocketAddr::new(ip(e.family, &e.saddr)?, e.sport),
        remote: SocketAddr::new(ip(e.family, &e.daddr)?, e.dport),
        netns: (e.netns != 0).then_some(e.netns),
    }))
}

fn unix_listen(e: &event::UnixListen) -> Result<KernelEvent> {
    let Some(path) = unix_path(valid(&e.path, e.path_len)) else {
        bail!("unix listen sample without a path");
    };
    Ok(KernelEvent::UnixListen(UnixListen {
        time_ns: e.header.ktime_ns,
        owner: current_task(&e.header),
        path,
    }))
}

fn role(o: &SockOwner) -> Option<Role> {
    match o.role {
        role::CLIENT => Some(Role::Client),
        role::SERVER => Some(Role::Server),
        _ => None,
    }
}

fn owner(o: &SockOwner) -> Option<Task> {
    (o.tgid != 0).then(|| Task {
        pid: o.tgid,
        tid: o.pid,
        comm: Comm::from_kernel(&o.comm),
    })
}

/// struct sockaddr_un bytes (family, then sun_path) to a path; abstract names (leading
/// NUL) as `@name`, as ss(8) shows them. None for unnamed sockets.
pub fn unix_path(sockaddr: &[u8]) -> Option<String> {
    let path = sockaddr.get(2..)?;
    match path.first()? {
        0 => Some(format!(
            "@{}",
            String::from_utf8_lossy(&path[1..]).trim_end_matches('\0')
        )),
        _ => Some(comm_str(path)),
    }
}

pub fn comm_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

struct Record<'a> {
    raw: &'a [u8],
    format: &'a RecordFormat,
}

impl Record<'_> {
    fn bytes(&self, field: &Field) -> Result<&[u8]> {
        match self.raw.get(field.offset..field.offset + field.size) {
            Some(b) => Ok(b),
            None => bail!(
                "record too short for field `{}` ({} bytes copied)",
                field.decl,
                self.raw.len()
            ),
        }
    }

    fn field(&self, name: &str) -> Result<&Field> {
        match self.format.field(name) {
            Some(f) => Ok(f),
            None => bail!("record has no field `{name}`"),
        }
    }

    fn int(&self, field: &Field) -> Result<i128> {
        let b = self.bytes(field)?;
        let mut buf = [0u8; 8];
        let n = b.len().min(8);
        buf[..n].copy_from_slice(&b[..n]);
        let unsigned = u64::from_ne_bytes(buf);
        Ok(if field.signed && n < 8 {
            let shift = 64 - 8 * n as u32;
            (((unsigned << shift) as i64) >> shift) as i128
        } else if field.signed {
            unsigned as i64 as i128
        } else {
            unsigned as i128
        })
    }

    fn i64(&self, name: &str) -> Result<i64> {
        Ok(self.int(self.field(name)?)? as i64)
    }

    fn opt_i64(&self, name: &str) -> Option<i64> {
        self.format
            .field(name)
            .and_then(|f| self.int(f).ok())
            .map(|v| v as i64)
    }

    /// A `char comm[16]` field, or a `__data_loc char[]` one (only when its payload was
    /// copied along with the record).
    fn string(&self, name: &str) -> Result<String> {
        let field = self.field(name)?;
        if field.is_data_loc() {
            let loc = self.int(field)? as u32;
            let (off, len) = ((loc & 0xffff) as usize, (loc >> 16) as usize);
            return match self.raw.get(off..off + len) {
                Some(b) => Ok(comm_str(b)),
                None => bail!("string `{name}` lies outside the copied record"),
            };
        }
        Ok(comm_str(self.bytes(field)?))
    }

    fn u64_of(&self, field: &Option<Field>, name: &str) -> Result<u64> {
        match field {
            Some(f) => Ok(self.int(f)? as u64),
            None => bail!("record has no field `{name}`"),
        }
    }

    fn opt_u64_of(&self, field: &Option<Field>) -> Option<u64> {
        field
            .as_ref()
            .and_then(|f| self.int(f).ok())
            .map(|v| v as u64)
    }

    fn endpoint(&self, fields: &Result<EndpointFields, String>) -> Result<SocketAddr> {
        let fields = match fields {
            Ok(f) => f,
            Err(e) => bail!("{e}"),
        };
        match fields {
            EndpointFields::Sockaddr(addr) => sockaddr(self.bytes(addr)?),
            EndpointFields::Split {
                addr,
                port,
                family,
                v6,
            } => {
                let port = self.int(port)? as u16;
                let ip = match self.int(family)? as u16 {
                    AF_INET => {
                        let b = self.bytes(addr)?;
                        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    AF_INET6 => {
                        let Some(v6) = v6 else {
                            bail!("record has no IPv6 address field");
                        };
                        let b = self.bytes(v6)?;
                        let mut a = [0u8; 16];
                        a.copy_from_slice(&b[..16]);
                        IpAddr::V6(Ipv6Addr::from(a))
                    }
                    other => bail!("unknown address family {other}"),
                };
                Ok(SocketAddr::new(ip, port))
            }
        }
    }
}

/// The fields of a tcp:tcp_send_reset or tcp:tcp_receive_reset record on this kernel.
struct TcpFields<'a> {
    format: &'a RecordFormat,
    skaddr: Option<Field>,
    reason: Option<Field>,
    state: Option<Field>,
    sock_cookie: Option<Field>,
    /// Err: what the record lacks, reported for each sample as the lookup by name did.
    src: Result<EndpointFields, String>,
    dst: Result<EndpointFields, String>,
}

/// Where one endpoint of a TCP record lies, in either of the kernel's layouts:
/// - 6.10+: `saddr`/`daddr` are 28-byte sockaddr_in/sockaddr_in6 (port inside);
/// - before: `sport`/`dport` (host order), `family`, `saddr`/`daddr` (4 bytes),
///   `saddr_v6`/`daddr_v6` (16 bytes).
enum EndpointFields {
    Sockaddr(Field),
    Split {
        addr: Field,
        port: Field,
        family: Field,
        v6: Option<Field>,
    },
}

impl<'a> TcpFields<'a> {
    fn find(format: &'a RecordFormat) -> Self {
        let field = |name: &str| format.field(name).cloned();
        Self {
            format,
            skaddr: field("skaddr"),
            reason: field("reason"),
            state: field("state"),
            sock_cookie: field("sock_cookie"),
            src: EndpointFields::find(format, true),
            dst: EndpointFields::find(format, false),
        }
    }
}

impl EndpointFields {
    /// The source (`src == true`) or destination endpoint's fields.
    fn find(format: &RecordFormat, src: bool) -> Result<Self, String> {
        let (addr, port, v6) = if src {
            ("saddr", "sport", "saddr_v6")
        } else {
            ("daddr", "dport", "daddr_v6")
        };
        let field = |name: &str| {
            format
                .field(name)
                .cloned()
                .ok_or_else(|| format!("record has no field `{name}`"))
        };
        let addr = field(addr)?;
        if addr.size >= 16 {
            return Ok(Self::Sockaddr(addr));
        }
        Ok(Self::Split {
            addr,
            port: field(port)?,
            family: field("family")?,
            v6: field(v6).ok(),
        })
    }
}

/// struct sockaddr_in / sockaddr_in6 as the kernel stores them (family in host order,
/// port in network order). An all-zero sockaddr (family 0) decodes as 0.0.0.0:0.
fn sockaddr(b: &[u8]) -> Result<SocketAddr> {
    if b.len() < 16 {
        bail!("sockaddr field of {} bytes", b.len());
    }
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = u16::from_be_bytes([b[2], b[3]]);
    match family {
        AF_INET => Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(b[4], b[5], b[6], b[7])),
            port,
        )),
        AF_INET6 if b.len() >= 24 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        0 => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
        other => bail!("unknown sockaddr family {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Layouts;
    use crate::record::tests::SEND_RESET_6_18;
    use tracer_ebpf::event::{RESET_RECEIVED_RECORD, RESET_SENT_RECORD, UNIX_ADDR_LEN};

    /// Debian 12's 6.1 (and everything before ~6.10): ports and family, no reason.
    const SEND_RESET_6_1: &str = "format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;
	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:__u16 sport;	offset:28;	size:2;	signed:0;
	field:__u16 dport;	offset:30;	size:2;	signed:0;
	field:__u16 family;	offset:32;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:34;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:38;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:42;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:58;	size:16;	signed:0;
";

    const RECEIVE_RESET_NO_COOKIE: &str = "format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;
	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:__u16 sport;	offset:16;	size:2;	signed:0;
	field:__u16 dport;	offset:18;	size:2;	signed:0;
	field:__u16 family;	offset:20;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:22;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:26;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:30;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:46;	size:16;	signed:0;
";

    fn layouts(kind: EventKind, text: &str) -> Layouts {
        let mut l = Layouts::default();
        l.by_kind
            .insert(kind, RecordFormat::parse(text).expect("format"));
        l
    }

    fn header(kind: EventKind) -> Header {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"fpm\0");
        Header {
            kind: kind as u32,
            _reserved: 0,
            ktime_ns: 42,
            pid_tgid: (100u64 << 32) | 101,
            comm,
        }
    }

    /// The bytes of a plain-old-data event, as the ring buffer hands them over.
    fn bytes<T: Copy>(event: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) event of integers and byte arrays.
        unsafe { std::slice::from_raw_parts((event as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn sent(raw: &[u8]) -> event::ResetSent {
        let mut e = event::ResetSent {
            header: header(EventKind::ResetSent),
            task_flags: PF_EXITING,
            record_len: raw.len() as u32,
            owner: SockOwner::UNKNOWN,
            orphan: 0,
            has_seq: 0,
            _pad: [0; 2],
            seq: 0,
            netns: 0,
            _pad2: 0,
            record: [0; RESET_SENT_RECORD],
        };
        e.record[..raw.len()].copy_from_slice(raw);
        e
    }

    fn received(raw: &[u8]) -> event::ResetReceived {
        let mut e = event::ResetReceived {
            header: header(EventKind::ResetReceived),
            record_len: raw.len() as u32,
            rcv_nxt: 0,
            netns: 0,
            has_seq: 0,
            _pad: [0; 3],
            owner: SockOwner::UNKNOWN,
            record: [0; RESET_RECEIVED_RECORD],
        };
        e.record[..raw.len()].copy_from_slice(raw);
        e
    }

    fn put(raw: &mut [u8], off: usize, bytes: &[u8]) {
        raw[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn sockaddr_in(ip: [u8; 4], port: u16) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        b[2..4].copy_from_slice(&port.to_be_bytes());
        b[4..8].copy_from_slice(&ip);
        b
    }

    #[test]
    fn send_reset_with_reason_and_sockaddrs() {
        let l = layouts(EventKind::ResetSent, SEND_RESET_6_18);
        let mut raw = [0u8; 88];
        put(&mut raw, 16, &0xffff_8880_1234_5678u64.to_ne_bytes());
        put(&mut raw, 28, &11u32.to_ne_bytes());
        put(&mut raw, 32, &sockaddr_in([127, 0, 0, 1], 9000));
        put(&mut raw, 60, &sockaddr_in([127, 0, 0, 1], 43210));
        let ev = Decoder::new(&l)
            .decode(&bytes(&sent(&raw)))
            .expect("decode");
        let KernelEvent::ResetSent(s) = ev else {
            panic!("wrong event {ev:?}")
        };
        assert_eq!(s.sk, 0xffff_8880_1234_5678);
        assert_eq!(s.reason, Some(11));
        assert_eq!(s.src.to_string(), "127.0.0.1:9000");
        assert_eq!(s.dst.to_string(), "127.0.0.1:43210");
        assert!(s.current_exiting);
        assert_eq!(s.current.pid, 100);
        assert_eq!(s.current.tid, 101);
        assert_eq!(s.current.comm, "fpm");
    }

    #[test]
    fn send_reset_before_6_10_has_no_reason() {
        let l = layouts(EventKind::ResetSent, SEND_RESET_6_1);
        let mut raw = [0u8; 74];
        put(&mut raw, 28, &9000u16.to_ne_bytes());
        put(&mut raw, 30, &43210u16.to_ne_bytes());
        put(&mut raw, 32, &AF_INET6.to_ne_bytes());
        let v6: Ipv6Addr = "::ffff:127.0.0.1".parse().expect("ip");
        put(&mut raw, 42, &v6.octets());
        put(&mut raw, 58, &Ipv6Addr::LOCALHOST.octets());
        let ev = Decoder::new(&l)
            .decode(&bytes(&sent(&raw)))
            .expect("decode");
        let KernelEvent::ResetSent(s) = ev else {
            panic!("wrong event {ev:?}")
        };
        assert_eq!(s.reason, None);
        assert_eq!(s.src.to_string(), "[::ffff:127.0.0.1]:9000");
        assert_eq!(s.dst.to_string(), "[::1]:43210");
    }

    #[test]
    fn receive_reset_without_optional_cookie() {
        let l = layouts(EventKind::ResetReceived, RECEIVE_RESET_NO_COOKIE);
        let mut raw = [0u8; 62];
        put(&mut raw, 16, &43210u16.to_ne_bytes());
        put(&mut raw, 18, &9000u16.to_ne_bytes());
        put(&mut raw, 20, &AF_INET.to_ne_bytes());
        put(&mut raw, 22, &[127, 0, 0, 1]);
        put(&mut raw, 26, &[127, 0, 0, 2]);
        let ev = Decoder::new(&l)
            .decode(&bytes(&received(&raw)))
            .expect("decode");
        let KernelEvent::ResetReceived(r) = ev else {
            panic!("wrong event {ev:?}")
        };
        assert_eq!(r.local.to_string(), "127.0.0.1:43210");
        assert_eq!(r.remote.to_string(), "127.0.0.2:9000");
        assert_eq!(r.sock_cookie, None);
    }

    #[test]
    fn unix_socket_error_carries_peer_and_listener_path() {
        let l = Layouts::default();
        let mut addr = Vec::from(1u16.to_ne_bytes());
        addr.extend_from_slice(b"/run/php/php8.2-fpm.sock\0");
        let mut e = event::UnixReset {
            header: header(EventKind::UnixReset),
            sock: 0x10,
            peer_sock: 0x20,
            peer_owner: SockOwner::UNKNOWN,
            ret: -104,
            source: 0,
            _pad: 0,
            path_len: addr.len() as u32,
            _pad2: 0,
            path: [0; UNIX_ADDR_LEN],
        };
        e.path[..addr.len()].copy_from_slice(&addr);
        e.peer_owner.tgid = 77;
        e.peer_owner.comm[..3].copy_from_slice(b"fpm");
        let ev = Decoder::new(&l).decode(&bytes(&e)).expect("decode");
        let KernelEvent::SocketError(e) = ev else {
            panic!("wrong event {ev:?}")
        };
        assert_eq!(e.ret, -104);
        let peer = e.unix.expect("unix peer");
        assert_eq!(peer.sock, 0x20);
        assert_eq!(peer.owner.map(|o| o.pid), Some(77));
        assert_eq!(peer.path.as_deref(), Some("/run/php/php8.2-fpm.sock"));
    }

    #[test]
    fn abstract_and_unnamed_unix_paths() {
        assert_eq!(unix_path(b"\x01\x00\x00sock"), Some("@sock".into()));
        assert_eq!(unix_path(b"\x01\x00"), None);
        assert_eq!(unix_path(b""), None);
    }

    #[test]
    fn truncated_and_malformed_samples_are_errors_not_panics() {
        let l = layouts(EventKind::ResetSent, SEND_RESET_6_18);
        let d = Decoder::new(&l);
        assert!(d.decode(&[0u8; 10]).is_err());
        // a header announcing a kind longer than the sample
        assert!(d.decode(&bytes(&sent(&[0u8; 88]))[..60]).is_err());
        // record shorter than its layout
        assert!(d.decode(&bytes(&sent(&[0u8; 20]))).is_err());
        // unknown kind
        let mut unknown = sent(&[0u8; 20]);
        unknown.header.kind = 99;
        assert!(d.decode(&bytes(&unknown)).is_err());
        // garbage family
        let mut raw = [0u8; 88];
        put(&mut raw, 32, &[77, 0]);
        assert!(d.decode(&bytes(&sent(&raw))).is_err());
        // record_len larger than the buffer is clamped, not trusted
        let mut e = sent(&[0u8; 88]);
        e.record_len = u32::MAX;
        assert!(d.decode(&bytes(&e)).is_ok());
    }
}
