//! scratch: a throwaway PostgreSQL cluster for the demo, the tests and the
//! benchmarks.
//!
//! `initdb` into a fresh temporary directory, `wal_level = logical`,
//! scram-sha-256 over TCP on a free 127.0.0.1 port, started with `pg_ctl`, and
//! removed (stopped, directory deleted) on drop. Run as root, the server
//! commands run as the `postgres` OS user through `runuser`. It can be stopped
//! and started again in place to inject faults. The binaries come from
//! `$CHAT_RELAY_PG_BIN`, else `/usr/lib/postgresql/15/bin`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Options for [`ScratchPostgres::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ScratchOptions {
    /// PEM certificate and key: serve TLS with them.
    pub tls: Option<(String, String)>,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// Keep `fsync` on (benchmarks that compare write paths).
    pub durable: bool,
    /// `pg_hba.conf` lines placed before the default scram rules.
    pub extra_hba: Vec<String>,
    /// Listen on this port (a server that replaces another) instead of a free one.
    pub port: Option<u16>,
    /// The `postgres` role's password (default: random).
    pub password: Option<String>,
    /// Run the server in this network namespace (`ip netns exec`), listening
    /// on `host`: tests put a network they can silence between it and the relay.
    pub netns: Option<String>,
    /// Address the server listens on and URLs name (default 127.0.0.1).
    pub host: Option<String>,
}

/// A running throwaway cluster.
pub struct ScratchPostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    pub password: String,
    pub host: String,
    netns: Option<String>,
    as_postgres_user: bool,
    running: bool,
}

impl ScratchPostgres {
    /// Starts a cluster with default options.
    pub fn start() -> anyhow::Result<ScratchPostgres> {
        Self::start_with(ScratchOptions::default())
    }

    pub fn start_with(opts: ScratchOptions) -> anyhow::Result<ScratchPostgres> {
        let bin = std::env::var_os("CHAT_RELAY_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        if !bin.join("initdb").exists() {
            bail!(
                "PostgreSQL server binaries not found in {} (install the Debian package postgresql-15, \
                 or set CHAT_RELAY_PG_BIN to the directory holding initdb and pg_ctl)",
                bin.display()
            );
        }
        // SAFETY of the check: geteuid has no preconditions.
        let as_postgres_user = is_root();
        let dir = std::env::temp_dir().join(format!("chat-relay-pg-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir)?;
        let password = opts.password.clone().unwrap_or_else(|| format!("pw{:016x}", fastrand::u64(..)));
        let mut pg = ScratchPostgres {
            dir,
            bin,
            port: 0,
            password,
            host: opts.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            netns: opts.netns.clone(),
            as_postgres_user,
            running: false,
        };
        pg.init(&opts)?;
        // A port found free can be taken before the server binds it (tests run
        // in parallel): try a few.
        let mut last = None;
        for _ in 0..5 {
            pg.port = match opts.port {
                Some(port) => port,
                None => free_port()?,
            };
            pg.write_port()?;
            match pg.pg_ctl_start() {
                Ok(()) => {
                    pg.running = true;
                    return Ok(pg);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("could not start postgres")))
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn init(&mut self, opts: &ScratchOptions) -> anyhow::Result<()> {
        let pwfile = self.dir.join("pwfile");
        std::fs::write(&pwfile, &self.password)?;
        if self.as_postgres_user {
            chown_postgres(&self.dir)?;
        }
        run(self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display())))
        .context("initdb")?;
        let mut conf = vec![
            format!("listen_addresses = '{}'", self.host),
            format!("unix_socket_directories = '{}'", self.dir.display()),
            "wal_level = logical".into(),
            "max_replication_slots = 16".into(),
            "max_wal_senders = 16".into(),
            "max_connections = 200".into(),
            "shared_buffers = 64MB".into(),
            "wal_sender_timeout = 20s".into(),
            "log_min_messages = warning".into(),
        ];
        if !opts.durable {
            // Fast but honest: commits still flush WAL (a no-op without fsync).
            // synchronous_commit = off would delay logical decoding, which only
            // reads flushed WAL, by up to wal_writer_delay (200 ms).
            conf.push("fsync = off".into());
            conf.push("full_page_writes = off".into());
        }
        if let Some((cert, key)) = &opts.tls {
            let (c, k) = (self.data().join("server.crt"), self.data().join("server.key"));
            std::fs::write(&c, cert)?;
            std::fs::write(&k, key)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))?;
            }
            if self.as_postgres_user {
                chown_postgres(&self.data())?;
            }
            conf.push("ssl = on".into());
        }
        conf.extend(opts.extra_conf.iter().cloned());
        append(&self.data().join("postgresql.conf"), &conf.join("\n"))?;
        let mut hba = String::from("local all all trust\n");
        for line in &opts.extra_hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(self.data().join("pg_hba.conf"), hba)?;
        Ok(())
    }

    fn write_port(&self) -> anyhow::Result<()> {
        std::fs::write(self.data().join("postgresql.auto.conf"), format!("port = {}\n", self.port))?;
        if self.as_postgres_user {
            chown_postgres(&self.data().join("postgresql.auto.conf"))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let mut cmd = self.command("pg_ctl");
        if let Some(ns) = &self.netns {
            let inner = cmd;
            cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(inner.get_program()).args(inner.get_args());
        }
        run(cmd.arg("-D").arg(self.data()).arg("-l").arg(self.dir.join("server.log")).args(["-w", "-t", "60", "start"]))
            .with_context(|| format!("pg_ctl start (log: {})", self.log_tail()))
    }

    /// The server log's last lines, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.running {
            run(self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]))?;
            self.running = false;
        }
        Ok(())
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if !self.running {
            self.pg_ctl_start()?;
            self.running = true;
        }
        Ok(())
    }

    /// `postgres://postgres:…@host:port/db?sslmode=disable`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres:{}@{}:{}/{}?sslmode=disable", self.password, self.host, self.port, db)
    }

    /// Same without `sslmode`, so a caller can choose one.
    pub fn url_no_ssl_param(&self, db: &str) -> String {
        format!("postgres://postgres:{}@{}:{}/{}", self.password, self.host, self.port, db)
    }

    /// Runs SQL through psql over the local socket (no password), for setup.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = self
            .command("psql")
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(path)).context("chown to postgres")
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    writeln!(f, "\n{text}")?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// A throwaway `nats-server` with JetStream (store in a temp dir) on a free
/// 127.0.0.1 port, for the replica benchmarks; killed and removed on drop.
pub struct ScratchNats {
    child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl ScratchNats {
    pub fn start() -> anyhow::Result<ScratchNats> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Self::spawn(port, dir.path())?;
        Ok(ScratchNats { child, port, dir })
    }

    fn spawn(port: u16, dir: &Path) -> anyhow::Result<std::process::Child> {
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("nats-server not found (apt-get install nats-server)")?;
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > std::time::Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nats-server did not listen on {port}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(child)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL), keeping its port and store, to inject a fault.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and store.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.child = Self::spawn(self.port, self.dir.path())?;
        Ok(())
    }
}

impl Drop for ScratchNats {
    fn drop(&mut self) {
        self.stop();
    }
}
