//! rsttrace's user-space work for a reset storm, without a kernel: N loopback aborts as the
//! programs sample them on 6.18 (the receive, the send, the receiver's failing recv(); the
//! RST segment itself is not sampled, see net.rs report_rst), decoded, attributed,
//! rendered as JSON lines into memory and counted, as the session does for each sample.
//!
//! Under callgrind this gives instructions per reset, a figure that does not move with the
//! load of a shared machine (CPU time does, by a third), so a change to the user-space
//! path can be judged by it before the bench:
//!
//! ```text
//! cargo build --release --example replay_storm
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/replay_storm 20000
//! callgrind_annotate /tmp/cg.out | head -40
//! ```
use std::{
    collections::{HashMap, HashSet},
    io::Write,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result};
use rsttrace::{
    attribute::Attributor,
    decode::Decoder,
    kernel::Layouts,
    model::Verdict,
    record::RecordFormat,
    report::{self, MemcgInfo, Resolve},
    summary::Tally,
};
use tracer_ebpf::{
    event::{self, EventKind, Header},
    role, SockOwner, ECONNRESET,
};

/// This kernel's (6.18) record formats, as tracefs lists them.
const SEND_RESET: &str = "format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;
";
const RECEIVE_RESET: &str = "format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:46;\tsize:16;\tsigned:0;
\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;
";

const ABORT_ON_CLOSE: u32 = 9;
const LISTENER_PORT: u16 = 40000;
const STORM_PID: u32 = 4242;

struct Facts;

impl Resolve for Facts {
    fn reason_name(&self, reason: u32) -> Option<&str> {
        (reason == ABORT_ON_CLOSE).then_some("TCP_ABORT_ON_CLOSE")
    }
    fn memcg(&self, _memcg_id: u64) -> Option<MemcgInfo> {
        None
    }
    fn wall_time_ns(&self, ktime_ns: u64) -> i128 {
        1_796_000_000_000_000_000 + i128::from(ktime_ns)
    }
}

fn header(kind: EventKind, ktime_ns: u64) -> Header {
    let mut comm = [0u8; 16];
    comm[..5].copy_from_slice(b"storm");
    Header {
        kind: kind as u32,
        _reserved: 0,
        ktime_ns,
        pid_tgid: (u64::from(STORM_PID) << 32) | u64::from(STORM_PID),
        comm,
    }
}

fn owner(role: u8) -> SockOwner {
    let mut comm = [0u8; 16];
    comm[..5].copy_from_slice(b"storm");
    SockOwner {
        tgid: STORM_PID,
        pid: STORM_PID,
        comm,
        role,
        ..SockOwner::UNKNOWN
    }
}

fn sockaddr_in(port: u16) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..2].copy_from_slice(&2u16.to_ne_bytes());
    b[2..4].copy_from_slice(&port.to_be_bytes());
    b[4..8].copy_from_slice(&[127, 0, 0, 1]);
    b
}

fn bytes<T: Copy>(event: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) event of integers and byte arrays.
    unsafe { std::slice::from_raw_parts((event as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// The three samples of reset `i`, in the order loopback delivers them.
fn samples(i: u64) -> [Vec<u8>; 3] {
    let t = 1_000_000 + i * 20_000;
    let client_port = 20000 + (i % 40000) as u16;
    let (client_sk, server_sk) = (
        0xffff_0000_0000_0000 + i * 4096,
        0xffff_1000_0000_0000 + i * 4096,
    );
    let seq = (i as u32).wrapping_mul(2_654_435_761);

    let mut rec = [0u8; event::RESET_RECEIVED_RECORD];
    rec[8..16].copy_from_slice(&client_sk.to_ne_bytes());
    rec[16..18].copy_from_slice(&client_port.to_ne_bytes());
    rec[18..20].copy_from_slice(&LISTENER_PORT.to_ne_bytes());
    rec[20..22].copy_from_slice(&2u16.to_ne_bytes());
    rec[22..26].copy_from_slice(&[127, 0, 0, 1]);
    rec[26..30].copy_from_slice(&[127, 0, 0, 1]);
    rec[64..72].copy_from_slice(&(i + 1).to_ne_bytes());
    let received = event::ResetReceived {
        header: header(EventKind::ResetReceived, t),
        record_len: 72,
        rcv_nxt: seq,
        netns: 4026531833,
        has_seq: 1,
        _pad: [0; 3],
        owner: owner(role::CLIENT),
        record: rec,
    };
    let mut rec = [0u8; event::RESET_SENT_RECORD];
    rec[16..24].copy_from_slice(&server_sk.to_ne_bytes());
    rec[24..28].copy_from_slice(&7i32.to_ne_bytes());
    rec[28..32].copy_from_slice(&ABORT_ON_CLOSE.to_ne_bytes());
    rec[32..60].copy_from_slice(&sockaddr_in(LISTENER_PORT));
    rec[60..88].copy_from_slice(&sockaddr_in(client_port));
    let sent = event::ResetSent {
        header: header(EventKind::ResetSent, t + 800),
        task_flags: 0,
        record_len: 88,
        owner: owner(role::SERVER),
        orphan: 0,
        has_seq: 1,
        _pad: [0; 2],
        seq,
        netns: 4026531833,
        _pad2: 0,
        record: rec,
    };
    let failed = event::SocketError {
        header: header(EventKind::SocketError, t + 3000),
        sock: client_sk,
        ret: -(ECONNRESET as i32),
        family: 2,
        source: event::source::SOCK_RECV,
    };
    [bytes(&received), bytes(&sent), bytes(&failed)]
}

fn main() -> Result<()> {
    let resets: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse().context("usage: replay_storm [RESETS]")?,
        None => 20_000,
    };
    let mut layouts = Layouts::default();
    layouts
        .by_kind
        .insert(EventKind::ResetSent, RecordFormat::parse(SEND_RESET)?);
    layouts.by_kind.insert(
        EventKind::ResetReceived,
        RecordFormat::parse(RECEIVE_RESET)?,
    );
    let decoder = Decoder::new(&layouts);
    let reasons = HashMap::from([(ABORT_ON_CLOSE, "TCP_ABORT_ON_CLOSE".to_string())]);
    let local = HashSet::from([IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let mut attributor = Attributor::new(&reasons, local);
    let mut tally = Tally::new(0);
    let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
    let (mut lines, mut bytes_out) = (0u64, 0u64);
    let mut verdicts = Vec::new();
    let mut render = |verdicts: &mut Vec<Verdict>, out: &mut Vec<u8>| -> Result<()> {
        for v in verdicts.drain(..) {
            if let Verdict::Reset(a) = v {
                report::json_line(out, &report::reset_json(&a, &Facts))?;
                tally.reset(&a, false);
                lines += 1;
            }
        }
        if out.len() > (1 << 20) - 4096 {
            bytes_out += out.len() as u64;
            out.clear();
        }
        Ok(())
    };
    for i in 0..resets {
        for sample in samples(i) {
            let event = decoder.decode(&sample)?;
            attributor.observe(event, &mut verdicts);
            render(&mut verdicts, &mut out)?;
        }
    }
    attributor.expire(u64::MAX, &mut verdicts);
    render(&mut verdicts, &mut out)?;
    bytes_out += out.len() as u64;
    let last = out.split(|b| *b == b'\n').rfind(|l| !l.is_empty());
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{resets} resets -> {lines} lines, {bytes_out} bytes of JSON"
    )?;
    if let Some(l) = last {
        stdout.write_all(l)?;
        writeln!(stdout)?;
    }
    anyhow::ensure!(lines == resets, "{lines} lines for {resets} resets");
    Ok(())
}
