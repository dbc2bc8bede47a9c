//! Upstream behaviours shared by the scenario tests and `cargo xtask demo`.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::wait_for_file;

/// A WSGI app whose paths break the worker in different ways, none reading the request body.
pub const GUNICORN_APP: &str = r#"
import ctypes
import os
import socket
import struct
import time


class CloseLate:
    """A complete response, then (1 s later, when nginx has served it and closed its end)
    an abortive close (SO_LINGER 0) of the connection: a RST nobody reads."""

    def __init__(self, body, sock):
        self.body = body
        self.sock = sock

    def __iter__(self):
        yield self.body

    def close(self):
        time.sleep(1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/py/segv":
        ctypes.string_at(0)  # a real SIGSEGV (NULL read), body unread
    if path == "/py/exit3":
        os._exit(3)  # body unread
    if path == "/py/late-reset":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return CloseLate(b"ok", environ["gunicorn.socket"])
    if path == "/py/abort":
        # Close the client connection with the body unread and stay alive.
        sock = environ["gunicorn.socket"]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    if path == "/py/linger0":
        # Read the whole request, then close with SO_LINGER 0: an abort with nothing unread
        # (tcp_disconnect(), reason TCP_STATE), as servers skipping TIME_WAIT do.
        environ["wsgi.input"].read()
        sock = environ["gunicorn.socket"]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    if path == "/py/sleep":
        # Say (in the file named by the query string) that the request is being served, then
        # take a while.
        with open(environ["QUERY_STRING"], "w") as marker:
            marker.write(str(os.getpid()))
        time.sleep(5)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"#;

/// A PHP script that writes its worker's pid to `marker`, then runs `body`.
pub fn php_script(marker: &Path, body: &str) -> String {
    format!(
        "<?php\nfile_put_contents('{}', (string) getmypid());\n{body}\necho \"done\\n\";\n",
        marker.display()
    )
}

/// Waits for the PHP worker to take the request; returns its pid.
pub fn wait_for_php_worker(marker: &Path) -> u32 {
    wait_for_file(marker, Duration::from_secs(15))
        .expect("the PHP script did not start within 15 s")
        .trim()
        .parse()
        .expect("the marker holds the worker's pid")
}

/// Runs `kill -SIG PID` as a child process and returns the kill process's pid.
pub fn run_kill(signal: &str, pid: u32) -> u32 {
    let mut kill = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .spawn()
        .expect("running kill");
    let kill_pid = kill.id();
    let status = kill.wait().expect("waiting for kill");
    assert!(status.success(), "kill {signal} {pid} failed: {status}");
    kill_pid
}

/// A php-fpm pool on a unix socket (plus its TCP twin) behind nginx's `/php-unix/`; returns
/// the servers and the socket path.
pub fn php_fpm_unix_behind_nginx(
    options: crate::PhpFpmOptions,
) -> (crate::PhpFpm, crate::Nginx, String) {
    let fpm = crate::PhpFpm::start(crate::PhpFpmOptions {
        unix_socket: true,
        ..options
    })
    .expect("starting php-fpm");
    let nginx = crate::Nginx::start(&[crate::Location::php_unix(&fpm)]).expect("starting nginx");
    let path = fpm
        .unix_socket()
        .expect("unix socket")
        .display()
        .to_string();
    (fpm, nginx, path)
}
