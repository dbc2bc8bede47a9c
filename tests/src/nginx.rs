//! An nginx master (foreground, one www-data worker) with its own config and temp paths.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::php_fpm::PhpFpm;
use crate::process::{children_of, free_port, wait_listening, wait_until, Service};
use crate::tempdir::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a location sends its requests.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// fastcgi_pass 127.0.0.1:port; SCRIPT_FILENAME = docroot + the path after the prefix.
    FastcgiTcp { port: u16, docroot: PathBuf },
    /// fastcgi_pass unix:path; SCRIPT_FILENAME as above.
    FastcgiUnix { path: PathBuf, docroot: PathBuf },
    /// proxy_pass http://127.0.0.1:port (the request URI is passed unchanged).
    Http { port: u16 },
}

/// `location <prefix>` → upstream.
#[derive(Debug, Clone)]
pub struct Location {
    pub prefix: String,
    pub upstream: Upstream,
}

impl Location {
    /// `/php/` → php-fpm's TCP pool.
    pub fn php(fpm: &PhpFpm) -> Self {
        Self {
            prefix: "/php/".into(),
            upstream: Upstream::FastcgiTcp {
                port: fpm.port(),
                docroot: fpm.docroot().to_path_buf(),
            },
        }
    }

    /// `/php-unix/` → php-fpm's unix socket pool.
    ///
    /// # Panics
    /// If the pool was started without `unix_socket`.
    pub fn php_unix(fpm: &PhpFpm) -> Self {
        let path = fpm
            .unix_socket()
            .expect("php-fpm was started without unix_socket: true")
            .to_path_buf();
        Self {
            prefix: "/php-unix/".into(),
            upstream: Upstream::FastcgiUnix {
                path,
                docroot: fpm.docroot().to_path_buf(),
            },
        }
    }

    /// `/py/` → an HTTP upstream (gunicorn) on 127.0.0.1:port.
    pub fn py(port: u16) -> Self {
        Self {
            prefix: "/py/".into(),
            upstream: Upstream::Http { port },
        }
    }

    /// `/closed/` → 127.0.0.1:port where nothing listens.
    pub fn closed(port: u16) -> Self {
        Self {
            prefix: "/closed/".into(),
            upstream: Upstream::Http { port },
        }
    }
}

pub struct Nginx {
    // Field order is drop order: stop the master before removing its folder.
    service: Service,
    dir: TempDir,
    port: u16,
}

impl Nginx {
    /// Writes nginx.conf, starts `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log -g 'daemon
    /// off;'` and waits until it listens and its worker exists.
    pub fn start(locations: &[Location]) -> Result<Self> {
        let dir = TempDir::new("nginx")?;
        let port = free_port();
        let conf = dir.write("nginx.conf", config(dir.path(), port, locations))?;
        let error_log = dir.path().join("error.log");
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"]);
        let mut service = Service::spawn(
            "nginx",
            &mut cmd,
            &dir.path().join("nginx.out"),
            libc::SIGTERM,
        )?;
        service.add_log(error_log);
        let master = service.pid();
        service.wait_ready("listening socket", START_TIMEOUT, || {
            wait_listening(port, Duration::from_millis(100)).ok()
        })?;
        service.wait_ready("worker", START_TIMEOUT, || {
            (!children_of(master).is_empty()).then_some(())
        })?;
        Ok(Self { service, dir, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn master_pid(&self) -> u32 {
        self.service.pid()
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master_pid())
    }

    pub fn error_log_contents(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Waits until error.log contains `needle`.
    pub fn wait_error_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.error_log_contents().contains(needle).then_some(())
        })
        .is_some()
    }

    /// Fails if the master has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.service.check_running().context("nginx master")
    }
}

fn config(dir: &Path, port: u16, locations: &[Location]) -> String {
    let d = dir.display();
    let mut conf = format!(
        "user www-data;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20   access_log {d}/access.log;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   client_max_body_size 64m;\n\
         \x20   client_body_buffer_size 4m;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       server_name localhost;\n"
    );
    for location in locations {
        conf.push_str(&location_block(location));
    }
    conf.push_str("    }\n}\n");
    conf
}

fn location_block(location: &Location) -> String {
    let prefix = &location.prefix;
    let mut block = String::new();
    let (pass, docroot) = match &location.upstream {
        Upstream::FastcgiTcp { port, docroot } => (format!("127.0.0.1:{port}"), docroot),
        Upstream::FastcgiUnix { path, docroot } => (format!("unix:{}", path.display()), docroot),
        Upstream::Http { port } => {
            let _ = write!(
                block,
                "        location {prefix} {{\n\
                 \x20           proxy_pass http://127.0.0.1:{port};\n\
                 \x20           proxy_request_buffering on;\n\
                 \x20           proxy_connect_timeout 10s;\n\
                 \x20           proxy_send_timeout 120s;\n\
                 \x20           proxy_read_timeout 120s;\n\
                 \x20           proxy_next_upstream off;\n\
                 \x20       }}\n"
            );
            return block;
        }
    };
    let _ = write!(
        block,
        "        location ~ ^{prefix}(.+)$ {{\n\
             \x20           fastcgi_pass {pass};\n\
             \x20           fastcgi_param SCRIPT_FILENAME {}/$1;\n\
             \x20           fastcgi_param SCRIPT_NAME $uri;\n\
             \x20           fastcgi_param REQUEST_URI $request_uri;\n\
             \x20           fastcgi_param DOCUMENT_URI $document_uri;\n\
             \x20           fastcgi_param QUERY_STRING $query_string;\n\
             \x20           fastcgi_param REQUEST_METHOD $request_method;\n\
             \x20           fastcgi_param CONTENT_TYPE $content_type;\n\
             \x20           fastcgi_param CONTENT_LENGTH $content_length;\n\
             \x20           fastcgi_param SERVER_PROTOCOL $server_protocol;\n\
             \x20           fastcgi_param GATEWAY_INTERFACE CGI/1.1;\n\
             \x20           fastcgi_param SERVER_SOFTWARE nginx;\n\
             \x20           fastcgi_param REMOTE_ADDR $remote_addr;\n\
             \x20           fastcgi_param REMOTE_PORT $remote_port;\n\
             \x20           fastcgi_param SERVER_ADDR $server_addr;\n\
             \x20           fastcgi_param SERVER_PORT $server_port;\n\
             \x20           fastcgi_param SERVER_NAME $server_name;\n\
             \x20           fastcgi_connect_timeout 10s;\n\
             \x20           fastcgi_send_timeout 120s;\n\
             \x20           fastcgi_read_timeout 120s;\n\
             \x20           fastcgi_next_upstream off;\n\
             \x20       }}\n",
        docroot.display()
    );
    block
}
