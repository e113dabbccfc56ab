//! A real PostgreSQL for the tests: the Debian `postgresql` package's
//! `initdb` and `pg_ctl` (found under `/usr/lib/postgresql/*/bin`; `.ci/run`
//! installs the package when missing), one private cluster per
//! [`Postgres`], one database per test ([`Postgres::database`]).
//!
//! The cluster lives in a temporary directory, listens on 127.0.0.1 on a
//! free port and on a Unix socket in its own directory, and is stopped
//! (`pg_ctl stop -m immediate`) when the value is dropped. PostgreSQL
//! refuses to run as root, and the tests run as root here and in CI: when
//! the test runs as root, every PostgreSQL program runs as `nobody`
//! through `runuser` (util-linux), and the cluster's directory is given to
//! `nobody`. Not as root, they run as the test's own user.
//!
//! The superuser `halite` has a password ([`PASSWORD`]), required over TCP
//! (scram-sha-256), so the master's `password_file` path is what the tests
//! exercise; the Unix socket trusts local users, for the harness's own
//! `createdb`.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The superuser's password.
pub const PASSWORD: &str = "halite-test-password";
/// The superuser.
pub const USER: &str = "halite";

/// A running PostgreSQL cluster, stopped on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The user PostgreSQL runs as when the test is root.
    run_as: Option<&'static str>,
    pub port: u16,
    databases: std::sync::atomic::AtomicU32,
    /// Whether the server offers TLS ([`Postgres::start_tls`]).
    tls: bool,
    /// The network namespace it runs in and the address it listens on
    /// there ([`Postgres::start_in`]); `None`: the test's own, 127.0.0.1.
    netns: Option<(String, String)>,
}

impl Postgres {
    /// initdb and start a cluster. Blocking (a few seconds).
    pub fn start() -> anyhow::Result<Postgres> {
        Postgres::start_with(false)
    }

    /// As [`Postgres::start`], in the network namespace `namespace`,
    /// listening on `address` there (`harness/netns.rs`). The harness's
    /// own connections go through the Unix socket, which a namespace does
    /// not hide: [`Postgres::socket_url`].
    pub fn start_in(namespace: &str, address: &str) -> anyhow::Result<Postgres> {
        Postgres::start_placed(false, Some((namespace.to_owned(), address.to_owned())))
    }

    /// As [`Postgres::start`], the server offering TLS with a certificate
    /// for 127.0.0.1 from a CA made now; the CA's PEM file is
    /// [`Postgres::ca_file`].
    pub fn start_tls() -> anyhow::Result<Postgres> {
        Postgres::start_with(true)
    }

    /// The PEM of the CA that signed a TLS cluster's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(tls: bool) -> anyhow::Result<Postgres> {
        Postgres::start_placed(tls, None)
    }

    fn start_placed(tls: bool, netns: Option<(String, String)>) -> anyhow::Result<Postgres> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("halite-pg-").tempdir()?;
        let run_as = nix::unistd::Uid::effective().is_root().then_some("nobody");
        if let Some(user) = run_as {
            let user = nix::unistd::User::from_name(user)?.context("no user `nobody` to run PostgreSQL as")?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))?;
        }
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n"))?;
        if let Some(user) = run_as {
            let user = nix::unistd::User::from_name(user)?.context("no user `nobody`")?;
            nix::unistd::chown(&pwfile, Some(user.uid), Some(user.gid))?;
        }
        std::fs::create_dir(dir.path().join("socket"))?;
        if let Some(user) = run_as {
            let user = nix::unistd::User::from_name(user)?.context("no user `nobody`")?;
            nix::unistd::chown(&dir.path().join("socket"), Some(user.uid), Some(user.gid))?;
        }
        let port = free_port()?;
        if tls {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
            let ca_key = KeyPair::generate()?;
            let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_cert = ca_params.self_signed(&ca_key)?;
            let issuer = Issuer::new(ca_params, ca_key);
            let key = KeyPair::generate()?;
            let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
            std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
            std::fs::write(dir.path().join("server.crt"), cert.pem())?;
            let key_file = dir.path().join("server.key");
            std::fs::write(&key_file, key.serialize_pem())?;
            // PostgreSQL refuses a key others may read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
            if let Some(user) = run_as {
                let user = nix::unistd::User::from_name(user)?.context("no user `nobody`")?;
                nix::unistd::chown(&key_file, Some(user.uid), Some(user.gid))?;
            }
        }
        let postgres = Postgres { dir, bin, run_as, port, databases: std::sync::atomic::AtomicU32::new(0), tls, netns };
        let data = postgres.data();
        postgres.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                USER,
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        if let Some((_, address)) = &postgres.netns {
            // initdb lets in loopback only; masters in other namespaces
            // come from their own addresses, with the password.
            use std::io::Write;
            let hba = postgres.dir.path().join("data/pg_hba.conf");
            let mut file = std::fs::OpenOptions::new().append(true).open(&hba)?;
            writeln!(file, "host all all {address}/24 scram-sha-256")?;
        }
        postgres.start_again()?;
        Ok(postgres)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// Runs one of PostgreSQL's programs to its end, as the cluster's user.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let path = self.bin.join(program);
        let mut command = match (self.run_as, &self.netns) {
            (Some(user), None) => {
                let mut command = crate::blocking_process("runuser");
                command.args(["-u", user, "--"]).arg(&path);
                command
            }
            (None, None) => crate::blocking_process(&path),
            // `ip netns exec` needs root, so a namespace means root.
            (run_as, Some((namespace, _))) => {
                let mut command = crate::blocking_process("ip");
                command.args(["netns", "exec", namespace]);
                if let Some(user) = run_as {
                    command.args(["runuser", "-u", user, "--"]);
                }
                command.arg(&path);
                command
            }
        };
        command.args(args).current_dir(self.dir.path());
        let output = command.output().with_context(|| format!("cannot run {}", path.display()))?;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        anyhow::ensure!(output.status.success(), "{program} {args:?} failed ({}):\n{text}", output.status);
        Ok(text)
    }

    /// Starts the cluster (again, after [`Postgres::stop_immediate`]) and
    /// returns once it accepts connections (`pg_ctl -w`).
    pub fn start_again(&self) -> anyhow::Result<()> {
        let mut options = format!(
            "-c port={} -c listen_addresses={} -c unix_socket_directories={} -c fsync=off -c max_connections=50",
            self.port,
            self.netns.as_ref().map_or("127.0.0.1", |(_, address)| address.as_str()),
            self.socket_dir().display()
        );
        if self.tls {
            let (cert, key) = (self.dir.path().join("server.crt"), self.dir.path().join("server.key"));
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "-t", "60", "start"])?;
        Ok(())
    }

    /// Stops the cluster at once, as a crash or a pulled cable would: open
    /// connections are cut without a goodbye.
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"])?;
        Ok(())
    }

    /// A fresh, empty database for one test; its name.
    pub fn database(&self) -> anyhow::Result<String> {
        let n = self.databases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("halite_test_{n}");
        let socket = self.socket_dir().display().to_string();
        self.run("createdb", &["-h", &socket, "-p", &self.port.to_string(), "-U", USER, &name])?;
        Ok(name)
    }

    /// The URL of `database` over TCP, without the password (it goes in a
    /// file: [`Postgres::password_file`]).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}?sslmode=disable", self.port)
    }

    /// The URL of `database` at `host` (where a master in another network
    /// namespace reaches it), without the password.
    pub fn url_at(&self, host: &str, database: &str) -> String {
        format!("postgres://{USER}@{host}:{}/{database}?sslmode=disable", self.port)
    }

    /// `database` through the cluster's Unix socket (local users are
    /// trusted), from whichever network namespace.
    pub fn socket_url(&self, database: &str) -> String {
        format!("host={} port={} user={USER} dbname={database} sslmode=disable", self.socket_dir().display(), self.port)
    }

    /// A file holding the password, in `dir`.
    pub fn password_file(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("pg-password");
        std::fs::write(&path, format!("{PASSWORD}\n"))?;
        Ok(path)
    }

    /// The server's log, for a failing test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(error) = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]) {
            // Already stopped by the test: nothing to do.
            let text = error.to_string();
            if !text.contains("Is server running?") {
                eprintln!("cannot stop the test PostgreSQL: {text}");
            }
        }
    }
}

/// The newest PostgreSQL's programs.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install the `postgresql` package (.ci/run does)")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context("no initdb under /usr/lib/postgresql/*/bin: install `postgresql`")
}

/// A port free now on 127.0.0.1 (PostgreSQL takes no port 0).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
