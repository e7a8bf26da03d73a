//! A PostgreSQL cluster of the test's own: Debian's `initdb` and `pg_ctl` on a free port, in a
//! temporary folder, trusted on loopback. PostgreSQL refuses to run as root (CI runs as root): it
//! then runs as the `postgres` user Debian's package makes (or `nobody`) through `setpriv`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{free_port, missing_real_part, wait_for_port};

pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    /// (user, uid, gid) to run as, when the test runs as root.
    run_as: Option<(String, u32, u32)>,
    _dir: tempfile::TempDir,
}

/// The folder of `initdb` and `pg_ctl`: on the PATH, or Debian's versioned folder (newest first).
fn bin_dir() -> Option<PathBuf> {
    if let Some(initdb) = crate::find_program("initdb", &[]) {
        let resolved = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        return resolved.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()?.parse::<u32>().ok()));
    versions.pop()
}

fn id_of(user: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, user]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

impl Postgres {
    /// Starts a cluster with a superuser `edge` trusted on 127.0.0.1; None when PostgreSQL is
    /// missing outside CI.
    pub fn start() -> Option<Self> {
        let Some(bin) = bin_dir() else {
            missing_real_part(
                "PostgreSQL (initdb, pg_ctl)",
                "install it with `apt-get install postgresql` (scripts/test.sh does)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| {
            let user = if id_of("postgres", "-u").is_some() { "postgres" } else { "nobody" };
            let uid = id_of(user, "-u").expect("a uid");
            let gid = id_of(user, "-g").expect("a gid");
            (user.to_string(), uid, gid)
        });
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        for folder in [&data, &sockets] {
            std::fs::create_dir(folder).expect("make folder");
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            if let Some((_, uid, gid)) = &run_as {
                std::os::unix::fs::chown(folder, Some(*uid), Some(*gid)).expect("chown to the PostgreSQL user");
            }
        }
        let port = free_port();
        let cluster = Self { bin, data, port, run_as, _dir: dir };
        let initdb = cluster.run(
            "initdb",
            &["-D", &cluster.data.display().to_string(), "-U", "edge", "--auth=trust", "--no-sync", "-E", "UTF8"],
        );
        assert!(initdb.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=50", sockets.display());
        let log = cluster.data.join("server.log").display().to_string();
        let started = cluster
            .run("pg_ctl", &["-D", &cluster.data.display().to_string(), "-o", &options, "-l", &log, "-w", "start"]);
        assert!(
            started.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(wait_for_port(port, Duration::from_secs(20)), "PostgreSQL did not listen on {port}");
        Some(cluster)
    }

    /// Runs one of PostgreSQL's programs, as its user when the test runs as root.
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            Some((_, uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([&format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        command
            .args(args)
            .env("LC_ALL", "C")
            .current_dir("/")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The server's processes now: the postmaster and its children (one backend per connection).
    pub fn server_pids(&self) -> Vec<u32> {
        server_pids_in(&self.data)
    }

    /// The data folder: [`server_pids_in`] lists the server's processes from it.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// A new empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        let made = self.run("createdb", &["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "edge", name]);
        assert!(made.status.success(), "createdb {name}: {}", String::from_utf8_lossy(&made.stderr));
        format!("postgres://edge@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data.display().to_string(), "-m", "immediate", "stop"]);
    }
}

/// The server's processes (the postmaster and its children: a backend per connection, started as
/// clients connect) of the cluster in `data`.
pub fn server_pids_in(data: &std::path::Path) -> Vec<u32> {
    let Some(main) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return Vec::new();
    };
    let mut pids = vec![main];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(main) {
            pids.push(pid);
        }
    }
    pids
}
