//! A throwaway PostgreSQL server for the tests: `initdb` and `pg_ctl` from
//! the `postgresql` package, listening on a unix socket in a temporary
//! directory only, stopped on drop. As root, the server runs as `postgres`
//! (or `nobody`). [`PgServer::stop`] and [`PgServer::start_again`] restart
//! it on the same data, to test clients that lose their connection.
//!
//! Needs PostgreSQL's server binaries: without them the tests fail.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A throwaway PostgreSQL server, stopped on drop (also when a test panics).
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Root may not run the server: commands run as this user then.
    user: Option<&'static str>,
}

fn find_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    versioned.sort();
    versioned.reverse();
    on_path
        .chain(versioned)
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = find_bin().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in \
                 /usr/lib/postgresql/*/bin: install the `postgresql` package (.ci/deps does)"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("cairn-pg")
            .tempdir()
            .expect("temp dir");
        let is_root = std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
        let user = is_root.then(|| {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            if passwd.lines().any(|l| l.starts_with("postgres:")) {
                "postgres"
            } else {
                "nobody"
            }
        });
        if let Some(user) = user {
            let ok = Command::new("chown")
                .arg(user)
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(ok.success(), "chown {} to {user}", dir.path().display());
        }
        let server = PgServer { dir, bin, user };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        server.start_again();
        server
    }

    /// Starts the server (again) on its data.
    pub fn start_again(&self) {
        let data = self.data();
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c max_connections=50",
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        );
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    /// The socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `postgres://` URL for database `name` (the socket directory as
    /// the percent-encoded host), as `--datastore-endpoint` takes it.
    pub fn url(&self, name: &str) -> String {
        let host: String = self
            .dir
            .path()
            .display()
            .to_string()
            .replace('%', "%25")
            .replace('/', "%2F");
        format!("postgres://postgres@{host}/{name}")
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = match self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run a postgresql tool");
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// A fresh database, from synchronous code; returns its URL.
    pub fn database_url(&self, name: &str) -> String {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(self.database(name));
        self.url(name)
    }

    /// A fresh database; returns its connection string.
    pub async fn database(&self, name: &str) -> String {
        let host = self.dir.path().display();
        let (client, conn) = tokio_postgres::connect(
            &format!("host={host} user=postgres dbname=postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect to postgresql");
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(client);
        let _ = driver.await;
        format!("host={host} user=postgres dbname={name}")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = match self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}
