//! A filesystem that forgets what was not made durable, for power-cut tests (as Jepsen's LazyFS): a
//! FUSE mount (the `fuser` crate, served by a thread of the test process) over a backing folder
//! that holds only the durable state; `power_cut()` throws away everything else.
//!
//! The model, what is durable when (as strict as POSIX allows, per file and per folder, but for
//! renames, which are whole as on a journaling filesystem):
//! - A file's content, size, mode, owner and modification time are durable after an fsync or
//!   fdatasync of it, not before. Until then its writes and truncations live in memory (4 KiB pages
//!   over the durable content); reads see them, so a program sees its own writes.
//! - A folder's entries are durable after an fsync of that folder: every name it holds then names
//!   durably what it names live (created, replaced, renamed in, hard-linked, symlinked) and every
//!   name it no longer holds is durably gone (unlinked, renamed out, rmdir). An fsync of a file does
//!   not make its name durable, nor does an fsync of a folder make the folder's own name durable
//!   (its parent's fsync does). So a file created and fsynced in a folder never fsynced vanishes at
//!   a cut, and a rename is undone unless a folder it touched was fsynced.
//! - A rename is one operation: made durable in its new folder it is gone from the old one, and the
//!   other way round (the fsync of either folder carries it to the other, if that folder has a
//!   durable place), so a cut never leaves a renamed file under both names. Its content is durable
//!   only as far as it was fsynced: a new file renamed into a synced folder, its data never synced,
//!   is empty after a cut.
//! - A file fsynced before its folder is kept aside (`.crashfs-orphans/` in the backing folder,
//!   hidden from the mount) until a folder's fsync gives it a name, and thrown away at a cut.
//! - A power cut (`power_cut`): the mount shows the backing folder as it is, nothing else. Every
//!   handle opened before it fails with EIO (the program that held it is gone), and inode numbers
//!   are never reused; the kernel caches nothing across requests (TTL 0, pages dropped at each
//!   open). Kill and reap the program first: its in-flight requests are then answered.
//!   `power_cut_torn(seed)` is a harsher cut for appenders: each file with unsynced data either loses
//!   all of it or (at random) keeps all of it but for the tail of its last write request (the kernel
//!   splits a program's write at page boundaries), cut at a 512-byte sector boundary inside it (a
//!   disk that wrote back its cache and lost power mid-write).
//! - Not modelled: the backing folder's own fsync (the machine running the test keeps power), other
//!   orders of unsynced writes reaching the disk, access times and extended attributes, a folder
//!   moved durably into its own subfolder (that fsync fails with EIO). mmap is untested: redb (4.x)
//!   reads and writes with pread/pwrite, set_len and fdatasync, and locks with flock/fcntl, which the
//!   kernel keeps for a FUSE mount.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileHandle, FopenFlags, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

mod state;

use state::{Kind, Rng, State};

/// What a cut threw away (or, from `pending`, would throw away now).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose unsynced writes or truncations were lost (not counting those torn).
    pub files_dropped: u64,
    /// Unsynced write() calls lost, and their bytes (a torn write's lost tail counts as one).
    pub writes_dropped: u64,
    pub bytes_dropped: u64,
    /// Unsynced truncations (set_len, O_TRUNC) lost.
    pub truncations_dropped: u64,
    /// Folder entries whose change (created, removed, renamed, replaced) was not durable.
    pub entries_dropped: u64,
    /// Torn cut: files whose unsynced data reached the disk but for a tail of their last write, and
    /// the bytes of those last writes that did.
    pub torn_files: u64,
    pub torn_bytes_kept: u64,
}

impl CutReport {
    fn add(&mut self, other: &CutReport) {
        self.files_dropped += other.files_dropped;
        self.writes_dropped += other.writes_dropped;
        self.bytes_dropped += other.bytes_dropped;
        self.truncations_dropped += other.truncations_dropped;
        self.entries_dropped += other.entries_dropped;
        self.torn_files += other.torn_files;
        self.torn_bytes_kept += other.torn_bytes_kept;
    }
}

/// Everything since the mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub cuts: u64,
    /// fsync/fdatasync calls on files, and fsync calls on folders.
    pub file_syncs: u64,
    pub dir_syncs: u64,
    /// The sum of every cut's report.
    pub dropped: CutReport,
}

/// A mounted crash-simulating view of a backing folder; unmounted when dropped.
pub struct CrashFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mount_point: PathBuf,
    backing: PathBuf,
    _mount_dir: tempfile::TempDir,
}

/// Whether this machine can mount it: /dev/fuse and fusermount3 (Debian's fuse3), which fuser
/// falls back to where the mount system call is refused. `Err` says what to install.
pub fn available() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: load the fuse module (or give the container /dev/fuse)".into());
    }
    if crate::find_program("fusermount3", &["/usr/bin", "/bin"]).is_none() {
        return Err("fusermount3 is missing: install it with `apt-get install fuse3` (scripts/test.sh does)".into());
    }
    Ok(())
}

/// Mounts `backing` for a test, or (on a developer's machine without FUSE) says why not and
/// returns None; in CI a missing part fails the test.
pub fn mount_or_skip(backing: &Path) -> Option<CrashFs> {
    if let Err(how) = available() {
        crate::missing_real_part("FUSE (/dev/fuse and fusermount3)", &how);
        return None;
    }
    match CrashFs::mount(backing) {
        Ok(fs) => Some(fs),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !crate::in_ci() => {
            eprintln!("SKIPPED: cannot mount FUSE here ({e}); run as root, as CI does");
            None
        }
        Err(e) => panic!("cannot mount the crash-simulating filesystem over {}: {e}", backing.display()),
    }
}

impl CrashFs {
    /// Mounts a view of `backing` (an existing folder: the durable state) at a new temporary folder.
    pub fn mount(backing: &Path) -> io::Result<CrashFs> {
        let backing = backing.canonicalize()?;
        let state = Arc::new(Mutex::new(State::open(&backing)?));
        let mount_dir = tempfile::Builder::new().prefix("crashfs-").tempdir()?;
        let mount_point = mount_dir.path().join("mnt");
        std::fs::create_dir(&mount_point)?;
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("crashfs".into()),
            MountOption::Subtype("crashfs".into()),
            MountOption::DefaultPermissions,
        ];
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        // Root lets the agent's service user in too; others keep it to themselves (no fuse.conf change).
        config.acl = if root { SessionACL::All } else { SessionACL::Owner };
        let server = Server { state: state.clone() };
        let session = fuser::spawn_mount(server, &mount_point, &config)?;
        Ok(CrashFs { state, session: Some(session), mount_point, backing, _mount_dir: mount_dir })
    }

    /// Where programs see the filesystem.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The durable state (hidden `.crashfs-orphans/` aside, while mounted).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loses everything not durable, at once: the next open sees only the backing folder.
    pub fn power_cut(&self) -> CutReport {
        self.cut(None)
    }

    /// A cut that may tear: each file with unsynced data loses all of it or keeps all but a tail of
    /// its last write (chosen from `seed`).
    pub fn power_cut_torn(&self, seed: u64) -> CutReport {
        self.cut(Some(Rng::new(seed)))
    }

    fn cut(&self, torn: Option<Rng>) -> CutReport {
        let backing = self.backing.display().to_string();
        self.lock().cut(torn).unwrap_or_else(|e| panic!("the cut cannot read back the backing folder {backing}: {e}"))
    }

    /// What a cut now would lose.
    pub fn pending(&self) -> CutReport {
        self.lock().pending()
    }

    /// Cuts, syncs and losses since the mount.
    pub fn totals(&self) -> Totals {
        self.lock().totals
    }
}

impl Drop for CrashFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if session.umount_and_join().is_err() {
                // Busy (a file still open): detach it; the kernel ends it when the last file closes.
                use std::os::unix::ffi::OsStrExt;
                if let Ok(path) = std::ffi::CString::new(self.mount_point.as_os_str().as_bytes()) {
                    // SAFETY: umount2 takes a valid C string path and flags.
                    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        self.lock().remove_orphans();
    }
}

/// The FUSE side: each request takes the state's lock, so a cut falls between two requests.
struct Server {
    state: Arc<Mutex<State>>,
}

impl Server {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Nothing is cached in the kernel beyond a request: after a cut it must ask again.
const TTL: Duration = Duration::ZERO;

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn entry(reply: ReplyEntry, result: Result<fuser::FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl fuser::Filesystem for Server {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.lock().lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.lock().set_attr(ino.0, mode, uid, gid, size, atime.map(time), mtime.map(time)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.lock().readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Pipes, sockets and devices hold no data a cut could lose.
            return reply.error(Errno::EPERM);
        }
        entry(reply, self.lock().make(parent.0, name, Kind::File, mode & !umask, req.uid(), req.gid(), None));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        entry(reply, self.lock().make(parent.0, name, Kind::Dir, mode & !umask, req.uid(), req.gid(), None));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.lock().unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.lock().rmdir(parent.0, name));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        entry(reply, self.lock().make(parent.0, link_name, Kind::Symlink, 0o777, req.uid(), req.gid(), Some(target)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(reply, self.lock().rename(parent.0, name, newparent.0, newname, no_replace));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        entry(reply, self.lock().link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No FOPEN_KEEP_CACHE: the kernel drops its cached pages of the file at each open.
        match self.lock().open_handle(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().read(fh.0, ino.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.lock().write(fh.0, ino.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.lock().release(fh.0, ino.0));
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(reply, self.lock().sync_file(fh.0, ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().open_handle(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = self.lock();
        let listing = match state.listing(fh.0, ino.0) {
            Ok(listing) => listing,
            Err(e) => return reply.error(e),
        };
        for (index, (child, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        empty(reply, self.lock().release(fh.0, ino.0));
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(reply, self.lock().sync_dir(fh.0, ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The backing folder's space, so that the agent's free-space checks see a real disk.
        match self.lock().statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.lock();
        let made = state.make(parent.0, name, Kind::File, mode & !umask, req.uid(), req.gid(), None);
        let opened = made.and_then(|attr| state.open_handle(attr.ino.0).map(|fh| (attr, fh)));
        match opened {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}
