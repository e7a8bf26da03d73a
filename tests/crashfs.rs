//! The crash-simulating filesystem (tests/support/crashfs) on real FUSE mounts: what a power cut
//! keeps is exactly what was fsynced (a file's data by its fsync, a name by its folder's fsync), the
//! agent's atomic write survives, and a redb file keeps its durable commits and loses the rest.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use edge_agent::base::write_file::{create_folder_durably, sync_folder, write_atomically, write_atomically_with_mode};
use edge_agent_tests::crashfs::{self, CrashFs};
use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// A backing folder holding `files` (already durable), and the filesystem over it.
fn mounted(files: &[(&str, &[u8])]) -> Option<(tempfile::TempDir, CrashFs)> {
    let backing = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let path = backing.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
    let fs = crashfs::mount_or_skip(backing.path())?;
    Some((backing, fs))
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut_but_was_seen_before() {
    let Some((_backing, fs)) = mounted(&[("log", b"durable line\n")]) else { return };
    let path = fs.mount_point().join("log");
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"unsynced line\n").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"durable line\nunsynced line\n", "a program sees its own writes");
    let pending = fs.pending();
    assert_eq!((pending.files_dropped, pending.writes_dropped, pending.bytes_dropped), (1, 1, 14));

    let report = fs.power_cut();
    assert_eq!(report, pending);
    assert_eq!(fs::read(&path).unwrap(), b"durable line\n");
    // The handle of the "killed" program is dead.
    assert!(file.write_all(b"late").is_err(), "a handle from before the cut must fail");
    drop(file);
    assert_eq!(fs::read(&path).unwrap(), b"durable line\n");
}

#[test]
fn a_write_with_fsync_stays() {
    let Some((backing, fs)) = mounted(&[("log", b"durable line\n")]) else { return };
    let path = fs.mount_point().join("log");
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"synced line\n").unwrap();
    file.sync_data().unwrap();
    assert_eq!(fs.pending(), Default::default());
    assert_eq!(fs::read(backing.path().join("log")).unwrap(), b"durable line\nsynced line\n");
    drop(file);
    fs.power_cut();
    assert_eq!(fs::read(&path).unwrap(), b"durable line\nsynced line\n");
    assert_eq!(fs.totals().file_syncs, 1);
}

#[test]
fn an_append_after_an_fsync_keeps_only_the_synced_part() {
    let Some((_backing, fs)) = mounted(&[("log", b"")]) else { return };
    let path = fs.mount_point().join("log");
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    // Across a page boundary, so the kept part ends inside a page the second write also touches.
    let first = vec![b'a'; 5000];
    let second = vec![b'b'; 3000];
    file.write_all(&first).unwrap();
    file.sync_all().unwrap();
    file.write_all(&second).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 8000);
    let report = fs.power_cut();
    assert_eq!((report.writes_dropped, report.bytes_dropped), (1, 3000));
    assert_eq!(fs::read(&path).unwrap(), first);
}

#[test]
fn an_overwrite_inside_a_durable_file_is_undone_to_the_old_bytes() {
    let old: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let Some((_backing, fs)) = mounted(&[("db", &old)]) else { return };
    let path = fs.mount_point().join("db");
    let mut file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(4000)).unwrap();
    file.write_all(&[0xee; 9000]).unwrap();
    let mut live = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut live).unwrap();
    let mut expected = old.clone();
    expected[4000..13_000].fill(0xee);
    assert_eq!(live, expected);
    drop(file);
    fs.power_cut();
    assert_eq!(fs::read(&path).unwrap(), old);
}

#[test]
fn a_truncation_without_fsync_is_undone() {
    let old: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8 + 1).collect();
    let Some((_backing, fs)) = mounted(&[("segment", &old)]) else { return };
    let path = fs.mount_point().join("segment");
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    // An unsynced write in the page the truncation cuts through, then the cut and growth again:
    // the bytes past the cut point read as zeros, not as old bytes (unsynced or durable).
    file.write_all(&[b'x'; 50]).unwrap();
    file.set_len(100).unwrap();
    file.set_len(10_000).unwrap();
    let live = fs::read(&path).unwrap();
    assert_eq!(&live[..50], &[b'x'; 50]);
    assert_eq!(&live[50..100], &old[50..100]);
    assert!(live[100..].iter().all(|&b| b == 0), "a truncation hides the bytes past it");
    assert_eq!(fs.pending().truncations_dropped, 2);
    drop(file);
    fs.power_cut();
    assert_eq!(fs::read(&path).unwrap(), old);

    // Synced, the truncation is durable.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(100).unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs.power_cut();
    assert_eq!(fs::read(&path).unwrap(), &old[..100]);
}

#[test]
fn a_rename_without_the_folder_fsync_is_undone_and_with_it_stays() {
    let Some((_backing, fs)) = mounted(&[("a", b"content")]) else { return };
    let mnt = fs.mount_point();
    fs::rename(mnt.join("a"), mnt.join("b")).unwrap();
    assert_eq!(names(mnt), ["b"]);
    let report = fs.power_cut();
    assert_eq!(report.entries_dropped, 2, "the name removed and the name added");
    assert_eq!(names(mnt), ["a"]);
    assert_eq!(fs::read(mnt.join("a")).unwrap(), b"content");

    fs::rename(mnt.join("a"), mnt.join("b")).unwrap();
    sync_dir(mnt);
    fs.power_cut();
    assert_eq!(names(mnt), ["b"]);
    assert_eq!(fs::read(mnt.join("b")).unwrap(), b"content");
}

#[test]
fn a_rename_between_folders_is_durable_as_a_whole_when_either_folder_is_fsynced() {
    let Some((_backing, fs)) = mounted(&[("old/key", b"secret"), ("new/.keep", b"")]) else { return };
    let mnt = fs.mount_point();
    fs::rename(mnt.join("old/key"), mnt.join("new/key")).unwrap();
    fs.power_cut();
    assert_eq!((names(&mnt.join("old")), names(&mnt.join("new"))), (vec!["key".into()], vec![".keep".into()]));

    // Only the old folder fsynced: the file is not lost, nor left in both.
    fs::rename(mnt.join("old/key"), mnt.join("new/key")).unwrap();
    sync_dir(&mnt.join("old"));
    fs.power_cut();
    assert_eq!(names(&mnt.join("old")), Vec::<String>::new());
    assert_eq!(names(&mnt.join("new")), [".keep", "key"]);
    assert_eq!(fs::read(mnt.join("new/key")).unwrap(), b"secret");
}

#[test]
fn a_new_file_fsynced_in_a_folder_never_fsynced_vanishes() {
    let Some((backing, fs)) = mounted(&[]) else { return };
    let mnt = fs.mount_point();
    let mut file = File::create(mnt.join("outbox.redb")).unwrap();
    file.write_all(b"rows").unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert!(!backing.path().join("outbox.redb").exists(), "no durable name before the folder's fsync");
    let report = fs.power_cut();
    assert_eq!(report.entries_dropped, 1);
    assert_eq!(names(mnt), Vec::<String>::new());

    // With the folder's fsync (after the file's) it stays, content and all.
    let mut file = File::create(mnt.join("outbox.redb")).unwrap();
    file.write_all(b"rows").unwrap();
    file.sync_all().unwrap();
    sync_dir(mnt);
    drop(file);
    fs.power_cut();
    assert_eq!(fs::read(mnt.join("outbox.redb")).unwrap(), b"rows");
}

#[test]
fn a_name_made_durable_before_its_content_is_an_empty_file_after_a_cut() {
    let Some((_backing, fs)) = mounted(&[]) else { return };
    let mnt = fs.mount_point();
    let mut file = File::create(mnt.join("stats.json")).unwrap();
    sync_dir(mnt);
    file.write_all(b"{\"events\":3}").unwrap();
    drop(file);
    fs.power_cut();
    assert_eq!(fs::read(mnt.join("stats.json")).unwrap(), b"");
}

#[test]
fn a_new_folder_needs_its_parents_fsync_too() {
    let Some((_backing, fs)) = mounted(&[]) else { return };
    let mnt = fs.mount_point();
    let day = mnt.join("evidence/2026-01-02");
    fs::create_dir_all(&day).unwrap();
    fs::write(day.join("e1.jpg"), b"jpeg").unwrap();
    File::open(day.join("e1.jpg")).unwrap().sync_all().unwrap();
    sync_dir(&day);
    sync_dir(&mnt.join("evidence"));
    fs.power_cut();
    assert_eq!(names(mnt), Vec::<String>::new(), "the top folder's own name was never made durable");

    fs::create_dir_all(&day).unwrap();
    fs::write(day.join("e1.jpg"), b"jpeg").unwrap();
    File::open(day.join("e1.jpg")).unwrap().sync_all().unwrap();
    sync_dir(&day);
    sync_dir(&mnt.join("evidence"));
    sync_dir(mnt);
    fs.power_cut();
    assert_eq!(fs::read(day.join("e1.jpg")).unwrap(), b"jpeg");
}

#[test]
fn an_unlink_without_the_folder_fsync_is_undone() {
    let Some((_backing, fs)) = mounted(&[("clip.mp4", b"frames")]) else { return };
    let mnt = fs.mount_point();
    fs::remove_file(mnt.join("clip.mp4")).unwrap();
    assert_eq!(names(mnt), Vec::<String>::new());
    fs.power_cut();
    assert_eq!(fs::read(mnt.join("clip.mp4")).unwrap(), b"frames");

    fs::remove_file(mnt.join("clip.mp4")).unwrap();
    sync_dir(mnt);
    fs.power_cut();
    assert_eq!(names(mnt), Vec::<String>::new());
}

#[test]
fn an_unlinked_file_still_open_reads_on_and_comes_back_after_a_cut() {
    let Some((_backing, fs)) = mounted(&[("segment", b"records")]) else { return };
    let path = fs.mount_point().join("segment");
    let mut file = OpenOptions::new().read(true).append(true).open(&path).unwrap();
    fs::remove_file(&path).unwrap();
    file.write_all(b" more").unwrap();
    let mut content = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut content).unwrap();
    assert_eq!(content, "records more");
    assert!(!path.exists());
    fs.power_cut();
    drop(file);
    assert_eq!(fs::read(&path).unwrap(), b"records");
}

#[test]
fn a_symlink_needs_its_folder_fsync() {
    let Some((_backing, fs)) = mounted(&[("models/v2.onnx", b"model")]) else { return };
    let mnt = fs.mount_point();
    std::os::unix::fs::symlink("models/v2.onnx", mnt.join("current")).unwrap();
    assert_eq!(fs::read(mnt.join("current")).unwrap(), b"model");
    fs.power_cut();
    assert!(fs::symlink_metadata(mnt.join("current")).is_err());

    std::os::unix::fs::symlink("models/v2.onnx", mnt.join("current")).unwrap();
    sync_dir(mnt);
    fs.power_cut();
    assert_eq!(fs::read_link(mnt.join("current")).unwrap(), Path::new("models/v2.onnx"));
    assert_eq!(fs::read(mnt.join("current")).unwrap(), b"model");
}

#[test]
fn a_removed_folder_comes_back_without_its_parents_fsync() {
    let Some((_backing, fs)) = mounted(&[("day/a.jpg", b"a")]) else { return };
    let mnt = fs.mount_point();
    fs::remove_file(mnt.join("day/a.jpg")).unwrap();
    sync_dir(&mnt.join("day"));
    fs::remove_dir(mnt.join("day")).unwrap();
    fs.power_cut();
    assert_eq!(names(mnt), ["day"]);
    assert_eq!(names(&mnt.join("day")), Vec::<String>::new(), "the unlink inside was synced");

    fs::remove_dir(mnt.join("day")).unwrap();
    sync_dir(mnt);
    fs.power_cut();
    assert_eq!(names(mnt), Vec::<String>::new());
}

#[test]
fn a_hard_link_is_one_file_and_needs_its_folder_fsync() {
    let Some((_backing, fs)) = mounted(&[("day/e1-clip.mp4", b"clip")]) else { return };
    let day = fs.mount_point().join("day");
    fs::hard_link(day.join("e1-clip.mp4"), day.join("e2-clip.mp4")).unwrap();
    assert_eq!(fs::metadata(day.join("e1-clip.mp4")).unwrap().nlink(), 2);
    fs.power_cut();
    assert_eq!(names(&day), ["e1-clip.mp4"]);

    fs::hard_link(day.join("e1-clip.mp4"), day.join("e2-clip.mp4")).unwrap();
    sync_dir(&day);
    let mut file = OpenOptions::new().append(true).open(day.join("e2-clip.mp4")).unwrap();
    file.write_all(b" more").unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs.power_cut();
    assert_eq!(fs::read(day.join("e1-clip.mp4")).unwrap(), b"clip more", "both names are one file");
    assert_eq!(fs::metadata(day.join("e2-clip.mp4")).unwrap().nlink(), 2);
}

#[test]
fn the_agents_atomic_write_survives_a_cut_and_one_without_the_folder_fsync_does_not() {
    let Some((_backing, fs)) = mounted(&[]) else { return };
    let config = fs.mount_point().join("config");
    let path = config.join("site.toml");
    fs::create_dir(&config).unwrap();
    sync_dir(fs.mount_point());
    write_atomically(&path, b"old = true\n").unwrap();
    write_atomically(&path, b"new = true\n").unwrap();
    write_atomically_with_mode(&config.join("key.pem"), b"secret", 0o600).unwrap();
    fs.power_cut();
    assert_eq!(fs::read(&path).unwrap(), b"new = true\n");
    assert_eq!(names(&config), ["key.pem", "site.toml"], "no temporary left behind");
    assert_eq!(fs::metadata(config.join("key.pem")).unwrap().mode() & 0o777, 0o600);

    // The same steps less the folder's fsync: the rename is lost, and the old content is whole.
    let temporary = config.join(".site.toml.tmp");
    let mut file = File::create(&temporary).unwrap();
    file.write_all(b"newer = true\n").unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs::rename(&temporary, &path).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"newer = true\n");
    fs.power_cut();
    assert_eq!(fs::read(&path).unwrap(), b"new = true\n");
    assert_eq!(names(&config), ["key.pem", "site.toml"]);

    // And without the file's fsync but with the folder's: the renamed file is empty after a cut.
    let mut file = File::create(&temporary).unwrap();
    file.write_all(b"newest = true\n").unwrap();
    drop(file);
    fs::rename(&temporary, &path).unwrap();
    sync_folder(&path).unwrap();
    fs.power_cut();
    assert_eq!(fs::read(&path).unwrap(), b"");
}

#[test]
fn another_process_killed_mid_work_keeps_only_what_it_synced() {
    let Some((_backing, fs)) = mounted(&[("log", b"durable\n"), ("state", b"old")]) else { return };
    let mnt = fs.mount_point();
    // As the agent will: a separate process writes (dd's conv=fsync fsyncs its output), is killed
    // and reaped, then the power goes.
    let script = "dd if=/dev/zero of=state bs=512 count=2 conv=notrunc,fsync 2>/dev/null \
                  && echo unsynced >> log && echo started && sleep 60";
    let mut child = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(mnt)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut started = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut started).unwrap();
    assert_eq!(started, "started\n");
    child.kill().unwrap();
    child.wait().unwrap();
    let report = fs.power_cut();
    assert_eq!((report.files_dropped, report.bytes_dropped), (1, 9), "{report:?}");
    assert_eq!(fs::read(mnt.join("log")).unwrap(), b"durable\n");
    assert_eq!(fs::read(mnt.join("state")).unwrap(), vec![0u8; 1024]);
}

#[test]
fn a_torn_cut_keeps_a_sector_aligned_prefix_of_the_last_write() {
    let Some((_backing, fs)) = mounted(&[("chain.jsonl", b"")]) else { return };
    let path = fs.mount_point().join("chain.jsonl");
    let (mut torn, mut lost) = (0, 0);
    for seed in 0..32 {
        fs::write(&path, b"").unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[b'a'; 4000]).unwrap();
        file.write_all(&[b'b'; 3000]).unwrap();
        drop(file);
        let report = fs.power_cut_torn(seed);
        let content = fs::read(&path).unwrap();
        if report.torn_files == 0 {
            assert_eq!(content, b"", "seed {seed}: a file not torn loses all its unsynced data");
            lost += 1;
            continue;
        }
        torn += 1;
        let len = content.len();
        assert!(len > 4000 && len < 7000 && len % 512 == 0, "seed {seed}: kept {len} bytes");
        assert!(content[..4000].iter().all(|&b| b == b'a') && content[4000..].iter().all(|&b| b == b'b'));
        // The kernel may split the program's write at a page boundary: the torn one is the last part.
        assert!(report.torn_bytes_kept > 0 && report.torn_bytes_kept <= len as u64 - 4000, "{report:?}");
        assert_eq!(report.bytes_dropped, 7000 - len as u64);
    }
    assert!(torn > 0 && lost > 0, "over 32 seeds both outcomes happen ({torn} torn, {lost} lost)");
}

const ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("rows");

fn rows(path: &Path) -> Vec<u64> {
    let db = edge_agent::base::redb_file::create(path).expect("redb opens after a cut");
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(ROWS).unwrap();
    table.iter().unwrap().map(|entry| entry.unwrap().0.value()).collect()
}

#[test]
fn redb_keeps_its_durable_commit_and_loses_what_was_not_synced() {
    let Some((_backing, fs)) = mounted(&[]) else { return };
    let path = fs.mount_point().join("outbox.redb");
    let db = edge_agent::base::redb_file::create(&path).unwrap();
    // The file's name is durable only with its folder's fsync.
    sync_dir(fs.mount_point());
    let row = [7u8; 1000];
    let insert = |txn: &redb::WriteTransaction, keys: std::ops::Range<u64>| {
        let mut table = txn.open_table(ROWS).unwrap();
        for key in keys {
            table.insert(key, row.as_slice()).unwrap();
        }
    };
    let txn = db.begin_write().unwrap();
    insert(&txn, 0..100);
    txn.commit().unwrap();
    // Committed without an fsync, then written but never committed: each larger than the half of
    // redb's cache it keeps for a transaction, so both reach the file (unsynced) before the cut.
    let mut txn = db.begin_write().unwrap();
    txn.set_durability(Durability::None).unwrap();
    insert(&txn, 100..3100);
    txn.commit().unwrap();
    let txn = db.begin_write().unwrap();
    insert(&txn, 3100..6100);
    assert_eq!(db.begin_read().unwrap().open_table(ROWS).unwrap().len().unwrap(), 3100);

    let report = fs.power_cut();
    eprintln!("the cut dropped redb's unsynced writes: {report:?}");
    assert!(report.bytes_dropped > 1_000_000, "redb's unsynced pages reached the file: {report:?}");
    // The "killed" process's handles are dead; dropping them writes nothing.
    drop(txn);
    drop(db);
    assert_eq!(rows(&path), (0..100).collect::<Vec<_>>());

    // Reopened, it goes on from its durable state: a commit without fsync is made durable by the
    // next durable one.
    let db = edge_agent::base::redb_file::create(&path).unwrap();
    let mut txn = db.begin_write().unwrap();
    txn.set_durability(Durability::None).unwrap();
    insert(&txn, 100..3100);
    txn.commit().unwrap();
    let txn = db.begin_write().unwrap();
    insert(&txn, 3100..3200);
    txn.commit().unwrap();
    fs.power_cut();
    drop(db);
    assert_eq!(rows(&path), (0..3200).collect::<Vec<_>>());
}

#[test]
fn a_redb_file_whose_folder_was_never_fsynced_is_gone_after_a_cut_but_not_one_the_agent_creates() {
    let Some((_backing, fs)) = mounted(&[]) else { return };
    let path = fs.mount_point().join("history.redb");
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(ROWS).unwrap().insert(1, [1u8; 10].as_slice()).unwrap();
    txn.commit().unwrap();
    drop(db);
    fs.power_cut();
    assert!(!path.exists(), "a durable commit in a file with no durable name is lost with the file");

    // The agent's way (base::redb_file) syncs the folder after creating the file.
    let db = edge_agent::base::redb_file::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(ROWS).unwrap().insert(1, [1u8; 10].as_slice()).unwrap();
    txn.commit().unwrap();
    drop(db);
    fs.power_cut();
    assert_eq!(rows(&path), [1]);
}

#[test]
fn folders_the_agent_makes_survive_a_cut_with_what_was_synced_in_them() {
    let Some((_backing, fs)) = mounted(&[]) else { return };
    let mnt = fs.mount_point();
    // A file written atomically into folders that do not exist yet (a first start's state folder).
    let key = mnt.join("state/keys/device.key");
    write_atomically_with_mode(&key, b"seed", 0o600).unwrap();
    // A folder made on its own, then a file synced in it as the evidence store does.
    let day = mnt.join("state/evidence/2026-01-02");
    create_folder_durably(&day).unwrap();
    let mut picture = File::create(day.join("e1.jpg")).unwrap();
    picture.write_all(b"jpeg").unwrap();
    picture.sync_all().unwrap();
    drop(picture);
    sync_folder(&day.join("e1.jpg")).unwrap();
    fs.power_cut();
    assert_eq!(fs::read(&key).unwrap(), b"seed");
    assert_eq!(fs::read(day.join("e1.jpg")).unwrap(), b"jpeg");
    assert_eq!(names(&mnt.join("state")), ["evidence", "keys"]);
}

/// Random work over a few folders and names with cuts between, checking that the model never fails
/// an operation with EIO (its durable and live trees stay consistent through renames, links and
/// removals) and that a file sealed (fsynced, then each folder up to the root fsynced, untouched
/// since, nor written through another name) survives every later cut with its content.
#[test]
fn random_work_with_cuts_keeps_every_sealed_file() {
    let mut checked = 0;
    for seed in 0..4 {
        let Some(count) = random_work(seed) else { return };
        checked += count;
    }
    assert!(checked > 150, "too few sealed files checked after cuts: {checked}");
}

/// One run of random work; returns how many sealed files it checked after cuts.
fn random_work(seed: u64) -> Option<usize> {
    let (_backing, fs) = mounted(&[])?;
    let mnt = fs.mount_point().to_owned();
    let dirs = ["", "d1", "d2", "d1/e"];
    let files = ["a", "b", "c"];
    let mut rng = 0x5eed_u64 ^ seed;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let in_dir = |dir: &str, name: &str| if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
    // Sealed files by path: the content they must have after any cut, and their inode now.
    let mut sealed: BTreeMap<String, (Vec<u8>, u64)> = BTreeMap::new();
    // A name changed: whatever was sealed at or under it no longer is.
    let renamed = |sealed: &mut BTreeMap<String, (Vec<u8>, u64)>, path: &str| {
        sealed.retain(|p, _| p != path && !p.starts_with(&format!("{path}/")));
    };
    // A file's content changed: every name of it is no longer sealed.
    let written = |sealed: &mut BTreeMap<String, (Vec<u8>, u64)>, path: &Path| {
        let ino = fs::metadata(path).unwrap().ino();
        sealed.retain(|_, (_, sealed_ino)| *sealed_ino != ino);
    };
    let fine = |e: &std::io::Error| {
        let code = e.raw_os_error().unwrap_or(0);
        assert!(code != libc::EIO && code != libc::ESTALE, "the model failed an operation: {e}");
    };
    let (mut cuts, mut seals, mut checked) = (0, 0, 0);
    for step in 0..3000 {
        let dir = dirs[next(dirs.len())];
        let file = in_dir(dir, files[next(files.len())]);
        let other_dir = dirs[next(dirs.len())];
        let other = in_dir(other_dir, files[next(files.len())]);
        match next(12) {
            0 | 1 => {
                let bytes = vec![(step % 251) as u8; 1 + next(9000)];
                match OpenOptions::new().create(true).append(true).open(mnt.join(&file)) {
                    Ok(mut f) => {
                        written(&mut sealed, &mnt.join(&file));
                        f.write_all(&bytes).unwrap();
                    }
                    Err(e) => fine(&e),
                }
            }
            2 => {
                if let Ok(f) = OpenOptions::new().write(true).open(mnt.join(&file)) {
                    written(&mut sealed, &mnt.join(&file));
                    f.set_len(next(5000) as u64).unwrap();
                }
            }
            3 => match File::open(mnt.join(&file)) {
                Ok(f) => f.sync_all().unwrap(),
                Err(e) => fine(&e),
            },
            4 => match fs::rename(mnt.join(&file), mnt.join(&other)) {
                Ok(()) => {
                    renamed(&mut sealed, &file);
                    renamed(&mut sealed, &other);
                }
                Err(e) => fine(&e),
            },
            5 => match fs::remove_file(mnt.join(&file)) {
                Ok(()) => renamed(&mut sealed, &file),
                Err(e) => fine(&e),
            },
            6 => match fs::hard_link(mnt.join(&file), mnt.join(&other)) {
                Ok(()) => renamed(&mut sealed, &other),
                Err(e) => fine(&e),
            },
            7 => match fs::create_dir(mnt.join(dir)) {
                Ok(()) => renamed(&mut sealed, dir),
                Err(e) => fine(&e),
            },
            8 => {
                // A folder removed when empty, or moved.
                let moved = if next(2) == 0 {
                    fs::remove_dir(mnt.join(dir))
                } else {
                    fs::rename(mnt.join(dir), mnt.join(other_dir))
                };
                match moved {
                    Ok(()) => {
                        renamed(&mut sealed, dir);
                        renamed(&mut sealed, other_dir);
                    }
                    Err(e) => fine(&e),
                }
            }
            9 => match File::open(mnt.join(dir)) {
                Ok(d) => d.sync_all().unwrap(),
                Err(e) => fine(&e),
            },
            10 => {
                // Seal a file: its data, then each folder up to the root.
                if let Ok(f) = File::open(mnt.join(&file)) {
                    f.sync_all().unwrap();
                    let mut at = Path::new(&file).parent();
                    while let Some(folder) = at {
                        File::open(mnt.join(folder)).unwrap().sync_all().unwrap();
                        at = folder.parent();
                    }
                    let ino = f.metadata().unwrap().ino();
                    sealed.insert(file.clone(), (fs::read(mnt.join(&file)).unwrap(), ino));
                    seals += 1;
                }
            }
            _ => {
                if next(4) == 0 {
                    if next(2) == 0 {
                        fs.power_cut();
                    } else {
                        fs.power_cut_torn(step as u64);
                    }
                    cuts += 1;
                    for (path, (content, ino)) in sealed.iter_mut() {
                        let found = fs::read(mnt.join(path.as_str()));
                        let what = found.as_ref().map_or_else(|e| e.to_string(), |c| format!("{} bytes", c.len()));
                        assert!(found.is_ok_and(|c| c == *content), "step {step}: sealed {path} lost ({what})");
                        // Inode numbers are new after a cut.
                        *ino = fs::metadata(mnt.join(path.as_str())).unwrap().ino();
                        checked += 1;
                    }
                }
            }
        }
    }
    eprintln!("random work {seed}: {cuts} cuts, {seals} seals, {checked} checked after cuts, {:?}", fs.totals());
    assert!(cuts > 50 && seals > 100, "too little work to judge: {cuts} cuts, {seals} seals");
    Some(checked)
}
