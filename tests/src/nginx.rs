//! An nginx master (foreground, one www-data worker) with its own config and temp paths,
//! on 127.0.0.1 or any address, in the host's network namespace or another one.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;
use crate::php_fpm::PhpFpm;
use crate::process::{children_of, server_port, wait_listening_at, wait_until, Placement, Service};
use crate::tempdir::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a location sends its requests.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// fastcgi_pass addr; SCRIPT_FILENAME = docroot + the path after the prefix.
    FastcgiTcp { addr: SocketAddr, docroot: PathBuf },
    /// fastcgi_pass unix:path; SCRIPT_FILENAME as above.
    FastcgiUnix { path: PathBuf, docroot: PathBuf },
    /// proxy_pass http://addr (the request URI is passed unchanged).
    Http { addr: SocketAddr },
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
                addr: fpm.addr(),
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
        Self::http("/py/", SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// `/closed/` → 127.0.0.1:port where nothing listens.
    pub fn closed(port: u16) -> Self {
        Self::http("/closed/", SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// `prefix` → proxy_pass http://addr (any address: another namespace, a service VIP,
    /// a container, a guest).
    pub fn http(prefix: &str, addr: SocketAddr) -> Self {
        Self {
            prefix: prefix.into(),
            upstream: Upstream::Http { addr },
        }
    }
}

/// Where nginx listens and what its upstream connections do.
#[derive(Debug, Clone)]
pub struct NginxOptions {
    /// The listen address (default 127.0.0.1); the port is picked free.
    pub listen: IpAddr,
    /// Run inside this network namespace (default: the host's).
    pub netns: Option<Netns>,
    /// `keepalive N` in an `upstream {}` block per HTTP location (HTTP/1.1 to the upstream,
    /// connections kept idle between requests): long-lived upstream connections, as
    /// production configs have. `None`: a connection per request.
    pub upstream_keepalive: Option<u32>,
}

impl Default for NginxOptions {
    fn default() -> Self {
        Self {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            upstream_keepalive: None,
        }
    }
}

pub struct Nginx {
    // Field order is drop order: stop the master before removing its folder.
    service: Service,
    dir: TempDir,
    addr: SocketAddr,
    netns: Option<Netns>,
}

impl Nginx {
    /// Writes nginx.conf, starts `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log -g 'daemon
    /// off;'` on 127.0.0.1 and waits until it listens and its worker exists.
    pub fn start(locations: &[Location]) -> Result<Self> {
        Self::start_with(locations, NginxOptions::default())
    }

    /// [`Self::start`] with a listen address, a network namespace, upstream keepalive.
    pub fn start_with(locations: &[Location], options: NginxOptions) -> Result<Self> {
        let dir = TempDir::new("nginx")?;
        let addr = SocketAddr::new(
            options.listen,
            server_port(options.listen, options.netns.as_ref()),
        );
        let conf = dir.write("nginx.conf", config(dir.path(), addr, locations, &options))?;
        let error_log = dir.path().join("error.log");
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"]);
        let placement = Placement {
            netns: options.netns.clone(),
            cgroups: Vec::new(),
        };
        let mut service = Service::spawn(
            "nginx",
            &mut cmd,
            &dir.path().join("nginx.out"),
            libc::SIGTERM,
            &placement,
        )?;
        service.add_log(error_log);
        let master = service.pid();
        service.wait_ready("listening socket", START_TIMEOUT, || {
            wait_listening_at(addr, options.netns.as_ref(), Duration::from_millis(100)).ok()
        })?;
        service.wait_ready("worker", START_TIMEOUT, || {
            (!children_of(master).is_empty()).then_some(())
        })?;
        Ok(Self {
            service,
            dir,
            addr,
            netns: options.netns,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address it listens on (inside [`Self::netns`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The namespace it runs in (`None`: the host's).
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    pub fn master_pid(&self) -> u32 {
        self.service.pid()
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master_pid())
    }

    pub fn error_log_contents(&self) -> String {
        std::fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    /// The error.log its configuration names (`error_log DIR/error.log info;`).
    pub fn error_log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
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

fn config(dir: &Path, addr: SocketAddr, locations: &[Location], options: &NginxOptions) -> String {
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
         \x20   client_body_buffer_size 4m;\n"
    );
    if let Some(keepalive) = options.upstream_keepalive {
        for (i, location) in locations.iter().enumerate() {
            if let Upstream::Http { addr } = location.upstream {
                let _ = write!(
                    conf,
                    "    upstream up{i} {{\n\
                     \x20       server {addr};\n\
                     \x20       keepalive {keepalive};\n\
                     \x20       keepalive_timeout 1h;\n\
                     \x20   }}\n"
                );
            }
        }
    }
    let _ = write!(
        conf,
        "    server {{\n\
         \x20       listen {addr};\n\
         \x20       server_name localhost;\n"
    );
    for (i, location) in locations.iter().enumerate() {
        let pool = options.upstream_keepalive.map(|_| format!("up{i}"));
        conf.push_str(&location_block(location, pool.as_deref()));
    }
    conf.push_str("    }\n}\n");
    conf
}

/// `pool`: the name of the location's keepalive `upstream {}` block, if any.
fn location_block(location: &Location, pool: Option<&str>) -> String {
    let prefix = &location.prefix;
    let mut block = String::new();
    let (pass, docroot) = match &location.upstream {
        Upstream::FastcgiTcp { addr, docroot } => (addr.to_string(), docroot),
        Upstream::FastcgiUnix { path, docroot } => (format!("unix:{}", path.display()), docroot),
        Upstream::Http { addr } => {
            // HTTP/1.1 and an empty Connection header are what keep upstream connections open.
            let (target, keepalive) = match pool {
                Some(pool) => (
                    pool.to_string(),
                    "            proxy_http_version 1.1;\n\
                     \x20           proxy_set_header Connection \"\";\n",
                ),
                None => (addr.to_string(), ""),
            };
            let _ = write!(
                block,
                "        location {prefix} {{\n\
                 \x20           proxy_pass http://{target};\n\
                 {keepalive}\
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
