//! A throwaway PostgreSQL for `halite-swarm cluster` when no `--store` is
//! given: the Debian `postgresql` package's `initdb` and `pg_ctl` (the
//! newest under `/usr/lib/postgresql/*/bin`), one cluster in a temporary
//! directory, on 127.0.0.1 on a free port, stopped (`pg_ctl stop -m
//! immediate`) by [`Postgres::stop`].
//!
//! As the tests' harness does (`tests/harness/postgres.rs`, which a binary
//! cannot depend on), it runs every PostgreSQL program as `nobody` through
//! `runuser` when this process is root, since PostgreSQL refuses to run as
//! root. The superuser `halite` has the password [`PASSWORD`], which the
//! masters read from a file; the Unix socket trusts local users, for
//! `createdb`. `fsync=off`: the benchmark measures halite, not the disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use halite_state::command::{self, Spec};

/// The superuser's password (a throwaway cluster on loopback).
pub const PASSWORD: &str = "halite-swarm-password";
/// The superuser.
pub const USER: &str = "halite";
/// The one database the masters share.
pub const DATABASE: &str = "halite";
/// Connections the server takes: each master keeps a pool plus its
/// listening and singleton connections; 200 leaves room for 10 masters.
const MAX_CONNECTIONS: u32 = 200;
/// How long one PostgreSQL program may run (initdb is the slowest).
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the throwaway PostgreSQL could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("no PostgreSQL programs under /usr/lib/postgresql/*/bin: install the `postgresql` package")]
    NotInstalled,
    #[error("cannot prepare the cluster directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("no user `nobody` to run PostgreSQL as (it refuses to run as root)")]
    NoNobody,
    #[error("cannot run {program}: {source}")]
    Run { program: String, source: command::CommandError },
    #[error("{program} failed: {output}")]
    Failed { program: String, output: String },
}

/// A running throwaway PostgreSQL cluster.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `nobody` when this process is root.
    run_as: Option<&'static str>,
    pub port: u16,
}

impl Postgres {
    /// initdb, start, and create [`DATABASE`]; returns once it accepts
    /// connections. `scratch` holds the cluster's directory.
    pub async fn start(scratch: &Path) -> Result<Postgres, PostgresError> {
        let bin = bin_dir().ok_or(PostgresError::NotInstalled)?;
        let dir_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PostgresError::Dir { path, source }
        };
        let dir =
            tempfile::Builder::new().prefix("halite-swarm-pg-").tempdir_in(scratch).map_err(dir_error(scratch))?;
        let run_as = nix::unistd::Uid::effective().is_root().then_some("nobody");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).map_err(dir_error(&pwfile))?;
        let socket = dir.path().join("socket");
        std::fs::create_dir(&socket).map_err(dir_error(&socket))?;
        if run_as.is_some() {
            let user = nix::unistd::User::from_name("nobody").ok().flatten().ok_or(PostgresError::NoNobody)?;
            for path in [dir.path(), &pwfile, &socket] {
                nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                    .map_err(|e| PostgresError::Dir { path: path.to_path_buf(), source: e.into() })?;
            }
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(dir_error(dir.path()))?;
        let port = listener.local_addr().map_err(dir_error(dir.path()))?.port();
        drop(listener);
        let postgres = Postgres { dir, bin, run_as, port };
        let data = postgres.dir.path().join("data").display().to_string();
        let pwfile = pwfile.display().to_string();
        postgres
            .run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    USER,
                    "--pwfile",
                    &pwfile,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            )
            .await?;
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c max_connections={MAX_CONNECTIONS}",
            socket.display()
        );
        let log = postgres.dir.path().join("postgres.log").display().to_string();
        postgres.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start"]).await?;
        let socket = socket.display().to_string();
        postgres.run("createdb", &["-h", &socket, "-p", &port.to_string(), "-U", USER, DATABASE]).await?;
        Ok(postgres)
    }

    /// The shared database's URL over TCP, without the password.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}?sslmode=disable", self.port)
    }

    /// The server's log (the masters' errors often point into it).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// CPU time used so far by the server and its live backends (the
    /// postmaster's children, found through `/proc`), for the benchmark's
    /// "PostgreSQL cores". Backends that already exited are not counted.
    pub fn cpu(&self) -> Duration {
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let Some(postmaster) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return Duration::ZERO;
        };
        let mut total = crate::proc::usage(postmaster).map_or(Duration::ZERO, |u| u.cpu);
        let Ok(entries) = std::fs::read_dir("/proc") else { return total };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if crate::proc::parent(pid) == Some(postmaster) {
                total += crate::proc::usage(pid).map_or(Duration::ZERO, |u| u.cpu);
            }
        }
        total
    }

    /// Stops the cluster at once and removes its directory.
    pub async fn stop(self) {
        let data = self.dir.path().join("data").display().to_string();
        if let Err(error) = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]).await {
            tracing::warn!(%error, "Cannot stop the throwaway PostgreSQL.");
        }
    }

    /// Runs one of PostgreSQL's programs to its end, as the cluster's user.
    async fn run(&self, program: &str, args: &[&str]) -> Result<(), PostgresError> {
        let path = self.bin.join(program).display().to_string();
        let mut argv: Vec<String> = match self.run_as {
            Some(user) => vec!["runuser".into(), "-u".into(), user.into(), "--".into(), path],
            None => vec![path],
        };
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let spec = Spec { cwd: Some(self.dir.path().to_path_buf()), timeout: Some(PROGRAM_TIMEOUT), ..Spec::new(argv) };
        let output = command::run_async(&spec, None)
            .await
            .map_err(|source| PostgresError::Run { program: program.into(), source })?;
        if !output.success() {
            return Err(PostgresError::Failed { program: program.into(), output: output.failure(program) });
        }
        Ok(())
    }
}

/// The newest installed PostgreSQL's programs.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}
