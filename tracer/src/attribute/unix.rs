//! Unix stream sockets: no RST exists; the receiver's call failing with ECONNRESET is the
//! reset. Its peer was released with unread data, or was an embryo of a listener that
//! closed (unix_release_sock(), net/unix/af_unix.c). Who owned each listening path tells
//! who closed a listener.
use super::FastMap as HashMap;

use crate::model::{
    Attribution, Cause, Role, SignalEvidence, SocketError, Task, Transport, UnixListen, UnixPeer,
};

use super::deaths::Deaths;

const MAX_LISTENERS_PER_PATH: usize = 4;

#[derive(Default)]
pub struct UnixResets {
    /// Listening path -> processes that listened on it (latest last).
    listeners: HashMap<String, Vec<Task>>,
}

impl UnixResets {
    pub fn on_listen(&mut self, l: UnixListen) {
        let owners = self.listeners.entry(l.path).or_default();
        owners.retain(|t| t.pid != l.owner.pid);
        if owners.len() >= MAX_LISTENERS_PER_PATH {
            owners.remove(0);
        }
        owners.push(l.owner);
    }

    pub fn attribute(&self, e: &SocketError, peer: &UnixPeer, deaths: &Deaths) -> Attribution {
        let mut out = Attribution::pending(
            e.time_ns,
            Transport::Unix,
            String::new(),
            peer.path.clone().unwrap_or_default(),
            e.sock,
            Some(e.receiver.clone()),
        );
        // For unix sockets the receiver's failed call is the reset itself.
        out.seen_by_receiver = Some(true);
        out.seen_ns = Some(e.time_ns);
        // An accepted unix socket carries its listener's address (unix_stream_connect(),
        // net/unix/af_unix.c); a connecting one has none unless it bound one itself.
        out.receiver_role = Some(if peer.path.is_some() {
            Role::Client
        } else {
            Role::Server
        });
        if let Some(owner) = &peer.owner {
            out.peer = Some(owner.clone());
            match deaths.recent_death(owner.pid, e.time_ns) {
                Some(exit) => {
                    out.peer_exiting = true;
                    out.cause = deaths.explain(exit);
                }
                None => out.cause = Cause::Abort { aborted_by: None },
            }
            return out;
        }
        // Never accepted while rsttrace watched: an embryo reset because its listener was
        // closed, when a process that listened on that path has just died, or has just
        // been asked to terminate (php-fpm's master closes its listeners on SIGTERM, then
        // waits for its workers before it exits).
        let owners = peer
            .path
            .as_ref()
            .and_then(|p| self.listeners.get(p))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let died = owners
            .iter()
            .filter_map(|t| deaths.recent_death(t.pid, e.time_ns).map(|d| (t, d)))
            .max_by_key(|(_, d)| d.time_ns);
        if let Some((owner, exit)) = died {
            out.listener_closed = true;
            out.peer = Some(owner.clone());
            out.peer_exiting = true;
            out.cause = deaths.explain(exit);
            return out;
        }
        let asked = owners
            .iter()
            .find_map(|t| deaths.termination_request(t, e.time_ns).map(|s| (t, s)));
        if let Some((owner, s)) = asked {
            out.listener_closed = true;
            out.peer = Some(owner.clone());
            out.cause = Cause::Signal {
                signal: SignalEvidence {
                    number: s.sig,
                    code: s.code,
                    sender: Some(s.sender.clone()),
                },
                exit_code: None,
            };
        }
        out
    }
}
