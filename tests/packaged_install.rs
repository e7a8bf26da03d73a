//! The packaged install as systemd runs it, emulated where CI has no systemd as PID 1: the service
//! user `edge-agent` (postinst), `/etc/edge-agent` 0750 and its config 0640 owned by that user, the
//! state folder 0750 (StateDirectory, passed as STATE_DIRECTORY), umask 0027, and every other file
//! read-only (ProtectSystem=strict with ReadWritePaths for the config folder) in a private mount
//! namespace. The page saves a zone and a threshold, and they land in the packaged config file.

mod web_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use edge_agent_tests::*;
use serde_json::json;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The service user, made as the package's postinst makes it.
fn service_user() -> Option<(u32, u32)> {
    let lookup = || {
        let output = Command::new("id").arg("-u").arg("edge-agent").output().ok()?;
        let uid = String::from_utf8(output.stdout).ok()?.trim().parse().ok()?;
        let output = Command::new("id").arg("-g").arg("edge-agent").output().ok()?;
        let gid = String::from_utf8(output.stdout).ok()?.trim().parse().ok()?;
        Some((uid, gid))
    };
    if let Some(ids) = lookup() {
        return Some(ids);
    }
    let made = Command::new("adduser")
        .args(["--system", "--group", "--no-create-home", "--home", "/var/lib/edge-agent", "edge-agent"])
        .stdout(Stdio::null())
        .status()
        .ok()?;
    made.success().then(lookup).flatten()
}

/// Copies a folder tree, readable by everyone (0755 folders, files keep their modes).
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn chown(path: &Path, (uid, gid): (u32, u32), mode: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_packaged_install_saves_a_zone_and_a_threshold_from_the_page() {
    if !is_root() {
        return missing_real_part(
            "root (to make the service user and a private mount namespace)",
            "run as root, as CI does",
        );
    }
    let Some(ids) = service_user() else {
        return missing_real_part("the `edge-agent` service user", "adduser (Debian's `adduser` package)");
    };
    let root = tempfile::tempdir().unwrap();
    // The service user must reach its folders, as under / on a real box.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = root.path().join("etc/edge-agent");
    let state = root.path().join("var/lib/edge-agent");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    // The package's files, where it puts them: /usr/bin/edge-agent and /usr/share/edge-agent/models
    // (the build's own copies may sit under a home folder the service user cannot enter).
    let binary = root.path().join("usr/bin/edge-agent");
    let data = root.path().join("usr/share/edge-agent");
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::copy(agent_binary(), &binary).unwrap();
    copy_folder(&repo_root().join("models"), &data.join("models"));
    for folder in ["etc", "var", "var/lib", "usr", "usr/bin", "usr/share", "usr/share/edge-agent"] {
        std::fs::set_permissions(root.path().join(folder), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The packaged config as shipped, with the page on a free port.
    let port = free_port();
    let packaged = std::fs::read_to_string(repo_root().join("edge-agent/debian/edge-agent.toml")).unwrap();
    let config = etc.join("edge-agent.toml");
    std::fs::write(&config, format!("{packaged}\n[web]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    chown(&etc, ids, 0o750);
    chown(&config, ids, 0o640);
    chown(&state, ids, 0o750);

    let log = root.path().join("agent.log");
    let script = format!(
        "mount --bind {etc} {etc} && mount --bind {state} {state} && mount -o remount,bind,ro / && \
         exec setpriv --reuid=edge-agent --regid=edge-agent --init-groups sh -c 'umask 0027; exec {binary} run --config {config}'",
        etc = etc.display(),
        state = state.display(),
        binary = binary.display(),
        config = config.display(),
    );
    let mut agent = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
        .env("STATE_DIRECTORY", &state)
        .env("EDGE_AGENT_DATA", &data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("unshare");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_for_port(port, Duration::from_secs(60)), "no page; log:\n{}", log_text());

    let base = format!("http://127.0.0.1:{port}");
    let session = web_support::HttpSession::open_on_loopback(&base);
    let zone = json!({ "zones": [{ "id": "kerb", "role": "road", "polygon": [[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]] }] });
    let saved = session.send_json("put", "/api/v1/zones/demo", &zone, Some(&session.csrf));
    assert_eq!(saved.status, 200, "zone: {}\nlog:\n{}", saved.body, log_text());
    let threshold = json!({ "values": { "rules.object.min_score": 0.45 } });
    let saved = session.send_json("post", "/api/v1/settings", &threshold, Some(&session.csrf));
    assert_eq!(saved.status, 200, "threshold: {}\nlog:\n{}", saved.body, log_text());

    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("kerb") && text.contains("min_score = 0.45"), "{text}");
    assert!(text.contains("# edge-agent configuration."), "the packaged comments are kept");
    let metadata = std::fs::metadata(&config).unwrap();
    assert_eq!((metadata.uid(), metadata.mode() & 0o777), (ids.0, 0o640), "still the service user's, 0640");
    // The agent wrote nothing outside its two folders: the rest was read-only to it.
    assert!(state.join("outbox.redb").is_file(), "the state lives in STATE_DIRECTORY");
    let _ = agent.kill();
    let _ = agent.wait();
}
