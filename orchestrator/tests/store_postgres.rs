//! The datastore contract on a real PostgreSQL server that the test starts
//! itself (unix socket only, in a temporary directory), plus what only a
//! shared database can show: writes through one server reach another's watch.
//!
//! Needs PostgreSQL's server binaries (`initdb`, `pg_ctl`; Debian package
//! `postgresql`, installed by `.ci/deps`). Without them the test fails.

// The server harness runs outside `#[test]` functions; failures must panic.
#![allow(clippy::unwrap_used)]

mod store_suite;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn::store::{Event, Store};

/// A throwaway PostgreSQL server, stopped on drop (also when a test panics).
struct PgServer {
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
    fn start() -> PgServer {
        let bin = find_bin().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in \
                 /usr/lib/postgresql/*/bin: install the `postgresql` package (.ci/deps does)"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("cairn-pg")
            .tempdir()
            .unwrap();
        let is_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
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
                .unwrap();
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
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c max_connections=50",
            server.dir.path().display()
        );
        let log = server.dir.path().join("server.log").display().to_string();
        server.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        );
        server
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
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// A fresh database; returns its connection string.
    async fn database(&self, name: &str) -> String {
        let host = self.dir.path().display();
        let (client, conn) = tokio_postgres::connect(
            &format!("host={host} user=postgres dbname=postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
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

fn socket_dir(server: &PgServer) -> &Path {
    server.dir.path()
}

/// One server for every scenario (starting one costs about a second); each
/// scenario gets its own database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store() {
    let server = PgServer::start();
    assert!(socket_dir(&server).join(".s.PGSQL.5432").exists());

    // The shared contract, with two handles (two "servers") as the writers.
    let db = server.database("contract").await;
    let a = Store::open_postgres(&db).await.unwrap();
    let b = Store::open_postgres(&db).await.unwrap();
    store_suite::run_all(&a, &b).await;

    // A write through one handle reaches a watch on the other.
    let db = server.database("shared").await;
    let one = Store::open_postgres(&db).await.unwrap();
    let two = Store::open_postgres(&db).await.unwrap();
    let mut w = two
        .watch("/shared/", two.current_revision().await.unwrap())
        .await
        .unwrap();
    let r1 = one.create("/shared/a", b"1".to_vec()).await.unwrap();
    let r2 = one.update("/shared/a", b"2".to_vec(), r1).await.unwrap();
    assert_eq!(store_suite::next(&mut w).await.revision(), r1);
    match store_suite::next(&mut w).await {
        Event::Put {
            kv,
            prev: Some(prev),
        } => {
            assert_eq!((kv.mod_revision, kv.value.as_slice()), (r2, &b"2"[..]));
            assert_eq!(prev.mod_revision, r1);
        }
        other => panic!("expected the update, got {other:?}"),
    }
    assert_eq!(
        two.get("/shared/a").await.unwrap().unwrap().mod_revision,
        r2
    );
    // A stale write through the other handle conflicts.
    assert!(two.update("/shared/a", b"3".to_vec(), r1).await.is_err());

    // A second open of an existing schema works (servers restart).
    let again = Store::open_postgres(&db).await.unwrap();
    assert_eq!(again.current_revision().await.unwrap(), r2);

    id_gaps(&server).await;
}

/// Ids taken by transactions that commit late (or never) do not make the
/// feed skip or reorder events.
async fn id_gaps(server: &PgServer) {
    let db = server.database("gaps").await;
    let store = Store::open_postgres(&db).await.unwrap();
    let (mut raw, driver) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(driver);
    let mut w = store
        .watch("/gap/", store.current_revision().await.unwrap())
        .await
        .unwrap();

    // Another writer reserves an id, a newer revision commits first, then
    // the reserved id commits: the watch still sees them in id order.
    let tx = raw.transaction().await.unwrap();
    let late: i64 = tx
        .query_one("SELECT nextval('cairn_log_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    let newer = store.create("/gap/newer", b"n".to_vec()).await.unwrap();
    assert_eq!(newer, late + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.execute(
        "INSERT INTO cairn_log (id, name, create_revision, prev_revision, deleted, value) \
         VALUES ($1, '/gap/late', 0, 0, FALSE, '\\x6c')",
        &[&late],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let first = store_suite::next(&mut w).await;
    assert_eq!(
        (first.revision(), first.kv().key.as_str()),
        (late, "/gap/late")
    );
    assert_eq!(store_suite::next(&mut w).await.revision(), newer);

    // An id that never commits is skipped after a short wait.
    let lost: i64 = raw
        .query_one("SELECT nextval('cairn_log_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    let started = Instant::now();
    let after = store.create("/gap/after", b"a".to_vec()).await.unwrap();
    assert_eq!(after, lost + 1);
    assert_eq!(store_suite::next(&mut w).await.revision(), after);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the feed waited for the gap"
    );
}

#[tokio::test]
async fn postgres_connect_error_is_reported() {
    let err = Store::open_postgres("host=/nonexistent-socket-dir user=postgres")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("postgresql"), "{err}");
}
