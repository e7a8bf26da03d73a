//! The model behind the crash-simulating filesystem: the live tree a program sees, the durable tree
//! in the backing folder, and what an fsync moves from the one to the other (see `mod.rs` for the
//! rules). Kept apart from the FUSE glue so that every rule lives in one place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::{CutReport, Totals};

pub(super) const ROOT: u64 = 1;
/// The unit of unsynced file data kept in memory.
const PAGE: u64 = 4096;
/// The unit a disk writes whole: a torn write keeps a prefix of these.
const SECTOR: u64 = 512;
/// Inside the backing folder, hidden from the mount: durable content that has no durable name (a
/// file fsynced before its folder was), emptied at each cut and removed at unmount.
pub(super) const ORPHANS: &str = ".crashfs-orphans";

type Fallible<T> = Result<T, Errno>;

fn io_errno(e: io::Error) -> Errno {
    Errno::from(e)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    fn file_type(self) -> FileType {
        match self {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
            Kind::Symlink => FileType::Symlink,
        }
    }
}

/// A file's live content: its durable content with the unsynced writes laid over it.
#[derive(Default)]
struct Data {
    /// Live size.
    size: u64,
    /// Length of the durable content.
    durable_len: u64,
    /// How much of the durable content still shows under the overlay (a truncation hides the rest).
    base_len: u64,
    /// Unsynced pages, each whole and holding live bytes (zeros past `size`).
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The durable content, kept open while the program has the file open.
    file: Option<File>,
    writes: u64,
    bytes: u64,
    truncations: u64,
    /// The last unsynced write and the bytes it covered, so that a torn cut can undo part of it.
    last_write: Option<LastWrite>,
}

struct LastWrite {
    offset: u64,
    len: u64,
    old_size: u64,
    undo: Vec<u8>,
}

impl Data {
    fn durable(len: u64) -> Self {
        Data { size: len, durable_len: len, base_len: len, ..Data::default() }
    }

    fn dirty(&self) -> bool {
        self.writes > 0 || self.truncations > 0
    }

    fn read(&self, base: Option<&File>, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(offset.saturating_add(len));
        let mut buf = vec![0u8; (end - offset) as usize];
        let base_end = end.min(self.base_len);
        if offset < base_end {
            let base = base.ok_or_else(|| io::Error::other("the durable content is not open"))?;
            base.read_exact_at(&mut buf[..(base_end - offset) as usize], offset)?;
        }
        for (&index, page) in self.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let start = (index * PAGE).max(offset);
            let stop = ((index + 1) * PAGE).min(end);
            buf[(start - offset) as usize..(stop - offset) as usize]
                .copy_from_slice(&page[(start - index * PAGE) as usize..(stop - index * PAGE) as usize]);
        }
        Ok(buf)
    }

    fn write(&mut self, base: Option<&File>, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let covered = end.min(self.size);
        let undo = if offset < covered { self.read(base, offset, covered - offset)? } else { Vec::new() };
        self.last_write = Some(LastWrite { offset, len: data.len() as u64, old_size: self.size, undo });
        self.write_raw(base, offset, data)?;
        self.writes += 1;
        self.bytes += data.len() as u64;
        Ok(())
    }

    fn write_raw(&mut self, base: Option<&File>, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        for index in offset / PAGE..=(end - 1) / PAGE {
            let page_start = index * PAGE;
            let start = page_start.max(offset);
            let stop = (page_start + PAGE).min(end);
            if !self.pages.contains_key(&index) {
                let whole = start == page_start && stop == page_start + PAGE;
                let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
                let base_end = (page_start + PAGE).min(self.base_len);
                if !whole && page_start < base_end {
                    let base = base.ok_or_else(|| io::Error::other("the durable content is not open"))?;
                    base.read_exact_at(&mut page[..(base_end - page_start) as usize], page_start)?;
                }
                self.pages.insert(index, page);
            }
            let page = self.pages.get_mut(&index).expect("inserted above");
            page[(start - page_start) as usize..(stop - page_start) as usize]
                .copy_from_slice(&data[(start - offset) as usize..(stop - offset) as usize]);
        }
        self.size = self.size.max(end);
        Ok(())
    }

    fn truncate(&mut self, size: u64) {
        self.truncate_raw(size);
        self.truncations += 1;
        // What a tear would undo is no longer the last change.
        self.last_write = None;
    }

    fn truncate_raw(&mut self, size: u64) {
        if size < self.size {
            self.base_len = self.base_len.min(size);
            let first_gone = size.div_ceil(PAGE);
            self.pages.retain(|&index, _| index < first_gone);
            if size % PAGE != 0 {
                if let Some(page) = self.pages.get_mut(&(size / PAGE)) {
                    page[(size % PAGE) as usize..].fill(0);
                }
            }
        }
        self.size = size;
    }

    /// Makes the live content durable: what fsync does.
    fn flush(&mut self, durable: &File) -> io::Result<()> {
        if self.base_len < self.durable_len {
            durable.set_len(self.base_len)?;
        }
        if self.size != self.base_len {
            durable.set_len(self.size)?;
        }
        for (&index, page) in &self.pages {
            let start = index * PAGE;
            if start >= self.size {
                continue;
            }
            let stop = (start + PAGE).min(self.size);
            durable.write_all_at(&page[..(stop - start) as usize], start)?;
        }
        self.pages.clear();
        self.durable_len = self.size;
        self.base_len = self.size;
        self.writes = 0;
        self.bytes = 0;
        self.truncations = 0;
        self.last_write = None;
        Ok(())
    }

    /// Undoes the last write past a random sector boundary inside it; returns the bytes kept of it.
    fn tear(&mut self, base: Option<&File>, rng: &mut Rng) -> io::Result<(u64, u64)> {
        let Some(last) = self.last_write.take() else { return Ok((0, 0)) };
        let first = (last.offset / SECTOR + 1) * SECTOR;
        let end = last.offset + last.len;
        let boundaries = if first < end { (end - 1 - first) / SECTOR + 1 } else { 0 };
        let keep = if boundaries == 0 { 0 } else { first + rng.below(boundaries) * SECTOR - last.offset };
        let restore_from = last.offset + keep;
        let undo_end = last.offset + last.undo.len() as u64;
        if restore_from < undo_end {
            let undo = &last.undo[keep as usize..];
            self.write_raw(base, restore_from, undo)?;
        }
        self.truncate_raw(last.old_size.max(restore_from));
        Ok((keep, last.len - keep))
    }
}

enum Body {
    File(Data),
    Dir { live: BTreeMap<OsString, u64>, durable: BTreeMap<OsString, u64> },
    Symlink(PathBuf),
}

struct Node {
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// The (folder, name) pairs a program sees it under.
    live_names: BTreeSet<(u64, OsString)>,
    /// The (folder, name) pairs it has in the backing folder (hard links for a file).
    durable_names: BTreeSet<(u64, OsString)>,
    /// Its durable content has no durable name and lies in the orphans folder.
    orphan: bool,
    /// Open handles (files and folders).
    open: u32,
    body: Body,
}

impl Node {
    fn new(perm: u16, uid: u32, gid: u32, body: Body) -> Self {
        let now = SystemTime::now();
        Node {
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            live_names: BTreeSet::new(),
            durable_names: BTreeSet::new(),
            orphan: false,
            open: 0,
            body,
        }
    }

    fn from_metadata(md: &fs::Metadata, body: Body) -> Self {
        let mut node = Node::new((md.mode() & 0o7777) as u16, md.uid(), md.gid(), body);
        node.atime = md.accessed().unwrap_or(node.atime);
        node.mtime = md.modified().unwrap_or(node.mtime);
        node.ctime = node.mtime;
        node
    }

    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir { .. } => Kind::Dir,
            Body::Symlink(_) => Kind::Symlink,
        }
    }

    /// A program can still reach it: by a name, or through a handle it holds.
    fn alive(&self) -> bool {
        !self.live_names.is_empty() || self.open > 0
    }
}

struct Handle {
    ino: u64,
    /// A folder's entries as they were when it was opened (readdir pages through this).
    listing: Vec<(u64, FileType, OsString)>,
}

/// A small deterministic generator for torn cuts (splitmix64).
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub(super) struct State {
    backing: PathBuf,
    orphans: PathBuf,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_handle: u64,
    pub(super) totals: Totals,
}

impl State {
    pub(super) fn open(backing: &Path) -> io::Result<Self> {
        let mut state = State {
            backing: backing.to_owned(),
            orphans: backing.join(ORPHANS),
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_handle: 1,
            totals: Totals::default(),
        };
        state.load()?;
        Ok(state)
    }

    /// Forgets every live thing and reads the tree again from the backing folder. Inode and handle
    /// numbers are never reused, so anything the kernel or a program still holds from before is
    /// stale.
    fn load(&mut self) -> io::Result<()> {
        self.nodes.clear();
        self.handles.clear();
        match fs::remove_dir_all(&self.orphans) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::create_dir(&self.orphans)?;
        let md = fs::metadata(&self.backing)?;
        let root = Node::from_metadata(&md, Body::Dir { live: BTreeMap::new(), durable: BTreeMap::new() });
        self.nodes.insert(ROOT, root);
        let backing = self.backing.clone();
        self.scan(ROOT, &backing, &mut HashMap::new())
    }

    fn scan(&mut self, dir: u64, path: &Path, links: &mut HashMap<(u64, u64), u64>) -> io::Result<()> {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            if dir == ROOT && name == ORPHANS {
                continue;
            }
            let md = fs::symlink_metadata(entry.path())?;
            let kind = md.file_type();
            let known = if kind.is_file() { links.get(&(md.dev(), md.ino())).copied() } else { None };
            let ino = match known {
                Some(ino) => ino,
                None => {
                    let body = if kind.is_file() {
                        Body::File(Data::durable(md.len()))
                    } else if kind.is_dir() {
                        Body::Dir { live: BTreeMap::new(), durable: BTreeMap::new() }
                    } else if kind.is_symlink() {
                        Body::Symlink(fs::read_link(entry.path())?)
                    } else {
                        // Sockets and pipes hold nothing that a power cut could lose.
                        continue;
                    };
                    let ino = self.new_ino();
                    self.nodes.insert(ino, Node::from_metadata(&md, body));
                    if kind.is_file() && md.nlink() > 1 {
                        links.insert((md.dev(), md.ino()), ino);
                    }
                    ino
                }
            };
            let node = self.nodes.get_mut(&ino).expect("inserted above");
            node.live_names.insert((dir, name.clone()));
            node.durable_names.insert((dir, name.clone()));
            if let Some(Body::Dir { live, durable }) = self.nodes.get_mut(&dir).map(|n| &mut n.body) {
                live.insert(name.clone(), ino);
                durable.insert(name, ino);
            }
            if kind.is_dir() {
                self.scan(ino, &entry.path(), links)?;
            }
        }
        Ok(())
    }

    fn new_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn node(&self, ino: u64) -> Fallible<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ESTALE)
    }

    fn node_mut(&mut self, ino: u64) -> Fallible<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ESTALE)
    }

    fn live(&self, dir: u64) -> Fallible<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.body {
            Body::Dir { live, .. } => Ok(live),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn live_mut(&mut self, dir: u64) -> Fallible<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(dir)?.body {
            Body::Dir { live, .. } => Ok(live),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn durable(&self, dir: u64) -> Fallible<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.body {
            Body::Dir { durable, .. } => Ok(durable),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn durable_mut(&mut self, dir: u64) -> Fallible<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(dir)?.body {
            Body::Dir { durable, .. } => Ok(durable),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn data_mut(&mut self, ino: u64) -> Fallible<&mut Data> {
        match &mut self.node_mut(ino)?.body {
            Body::File(data) => Ok(data),
            Body::Dir { .. } => Err(Errno::EISDIR),
            Body::Symlink(_) => Err(Errno::EINVAL),
        }
    }

    /// Where a thing's durable content is in the backing folder, if it has any.
    fn path_of(&self, ino: u64) -> Option<PathBuf> {
        if ino == ROOT {
            return Some(self.backing.clone());
        }
        let node = self.nodes.get(&ino)?;
        if let Some((parent, name)) = node.durable_names.iter().next() {
            return Some(self.path_of(*parent)?.join(name));
        }
        node.orphan.then(|| self.orphans.join(ino.to_string()))
    }

    /// Whether `dir`'s durable place is `ancestor` or inside it.
    fn durably_within(&self, dir: u64, ancestor: u64) -> bool {
        let mut at = dir;
        loop {
            if at == ancestor {
                return true;
            }
            match self.nodes.get(&at).and_then(|n| n.durable_names.iter().next()) {
                Some((parent, _)) => at = *parent,
                None => return false,
            }
        }
    }

    /// The durable content opened for reading and writing (read-only where the mode forbids more).
    fn open_durable(&self, ino: u64) -> io::Result<Option<File>> {
        let Some(path) = self.path_of(ino) else { return Ok(None) };
        match OpenOptions::new().read(true).write(true).open(&path) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(&path).map(Some),
            other => other.map(Some),
        }
    }

    /// Runs `f` on a file's live data with its durable content open (kept open while the program
    /// has the file open).
    fn with_data<T>(&mut self, ino: u64, f: impl FnOnce(&mut Data, Option<&File>) -> io::Result<T>) -> Fallible<T> {
        let needs_open = match &self.node(ino)?.body {
            Body::File(data) => data.file.is_none() && data.base_len > 0,
            Body::Dir { .. } => return Err(Errno::EISDIR),
            Body::Symlink(_) => return Err(Errno::EINVAL),
        };
        let opened = if needs_open { self.open_durable(ino).map_err(io_errno)? } else { None };
        let node = self.node_mut(ino)?;
        let keep = node.open > 0;
        let Body::File(data) = &mut node.body else { return Err(Errno::EIO) };
        let file = data.file.take().or(opened);
        let result = f(data, file.as_ref());
        if keep {
            data.file = file;
        }
        result.map_err(io_errno)
    }

    // ---- what a program sees ----

    pub(super) fn attr(&self, ino: u64) -> Fallible<FileAttr> {
        let node = self.node(ino)?;
        let (size, nlink) = match &node.body {
            Body::File(data) => (data.size, node.live_names.len() as u32),
            Body::Dir { live, .. } => {
                let subdirs = live.values().filter(|i| self.nodes.get(i).is_some_and(|n| n.kind() == Kind::Dir));
                (4096, 2 + subdirs.count() as u32)
            }
            Body::Symlink(target) => (target.as_os_str().len() as u64, node.live_names.len() as u32),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.mtime,
            kind: node.kind().file_type(),
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    pub(super) fn lookup(&self, parent: u64, name: &OsStr) -> Fallible<FileAttr> {
        let ino = *self.live(parent)?.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    fn check_free(&self, parent: u64, name: &OsStr) -> Fallible<()> {
        if parent == ROOT && name == ORPHANS {
            return Err(Errno::EPERM);
        }
        if self.live(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    fn link_live(&mut self, parent: u64, name: &OsStr, ino: u64) -> Fallible<()> {
        self.live_mut(parent)?.insert(name.to_owned(), ino);
        self.node_mut(ino)?.live_names.insert((parent, name.to_owned()));
        let now = SystemTime::now();
        let dir = self.node_mut(parent)?;
        dir.mtime = now;
        dir.ctime = now;
        Ok(())
    }

    fn unlink_live(&mut self, parent: u64, name: &OsStr) -> Fallible<u64> {
        let ino = self.live_mut(parent)?.remove(name).ok_or(Errno::ENOENT)?;
        let node = self.node_mut(ino)?;
        node.live_names.remove(&(parent, name.to_owned()));
        node.ctime = SystemTime::now();
        let now = SystemTime::now();
        let dir = self.node_mut(parent)?;
        dir.mtime = now;
        dir.ctime = now;
        Ok(ino)
    }

    /// After a thing lost a name or a handle: if nothing can reach it any more, its unsynced data and
    /// any durable content without a durable name go.
    fn settle(&mut self, ino: u64) -> Fallible<()> {
        let node = self.node(ino)?;
        // The root has no name yet is always reachable.
        if ino == ROOT || node.alive() || !node.durable_names.is_empty() {
            if node.open == 0 {
                if let Body::File(data) = &mut self.node_mut(ino)?.body {
                    data.file = None;
                }
            }
            return Ok(());
        }
        self.discard(ino)
    }

    pub(super) fn make(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        target: Option<&Path>,
    ) -> Fallible<FileAttr> {
        self.check_free(parent, name)?;
        let body = match kind {
            Kind::File => Body::File(Data::default()),
            Kind::Dir => Body::Dir { live: BTreeMap::new(), durable: BTreeMap::new() },
            Kind::Symlink => Body::Symlink(target.ok_or(Errno::EINVAL)?.to_owned()),
        };
        let ino = self.new_ino();
        self.nodes.insert(ino, Node::new((perm & 0o7777) as u16, uid, gid, body));
        self.link_live(parent, name, ino)?;
        self.attr(ino)
    }

    pub(super) fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Fallible<FileAttr> {
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(Errno::EPERM);
        }
        self.check_free(parent, name)?;
        self.link_live(parent, name, ino)?;
        self.node_mut(ino)?.ctime = SystemTime::now();
        self.attr(ino)
    }

    pub(super) fn unlink(&mut self, parent: u64, name: &OsStr) -> Fallible<()> {
        let ino = *self.live(parent)?.get(name).ok_or(Errno::ENOENT)?;
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        self.unlink_live(parent, name)?;
        self.settle(ino)
    }

    pub(super) fn rmdir(&mut self, parent: u64, name: &OsStr) -> Fallible<()> {
        let ino = *self.live(parent)?.get(name).ok_or(Errno::ENOENT)?;
        if !self.live(ino)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.unlink_live(parent, name)?;
        self.settle(ino)
    }

    pub(super) fn rename(
        &mut self,
        from: u64,
        name: &OsStr,
        to: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Fallible<()> {
        let ino = *self.live(from)?.get(name).ok_or(Errno::ENOENT)?;
        if to == ROOT && new_name == ORPHANS {
            return Err(Errno::EPERM);
        }
        let replaced = self.live(to)?.get(new_name).copied();
        if replaced == Some(ino) {
            return Ok(());
        }
        if replaced.is_some() && no_replace {
            return Err(Errno::EEXIST);
        }
        let is_dir = self.node(ino)?.kind() == Kind::Dir;
        if let Some(other) = replaced {
            match (is_dir, self.node(other)?.kind() == Kind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.live(other)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        if is_dir && self.live_within(to, ino) {
            return Err(Errno::EINVAL);
        }
        if replaced.is_some() {
            self.unlink_live(to, new_name)?;
        }
        self.unlink_live(from, name)?;
        self.link_live(to, new_name, ino)?;
        if let Some(other) = replaced {
            self.settle(other)?;
        }
        Ok(())
    }

    /// Whether folder `dir` is `ancestor` or lives inside it now.
    fn live_within(&self, dir: u64, ancestor: u64) -> bool {
        let mut at = dir;
        loop {
            if at == ancestor {
                return true;
            }
            match self.nodes.get(&at).and_then(|n| n.live_names.iter().next()) {
                Some((parent, _)) if at != ROOT => at = *parent,
                _ => return false,
            }
        }
    }

    pub(super) fn readlink(&self, ino: u64) -> Fallible<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        match &self.node(ino)?.body {
            Body::Symlink(target) => Ok(target.as_os_str().as_bytes().to_vec()),
            _ => Err(Errno::EINVAL),
        }
    }

    pub(super) fn set_attr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Fallible<FileAttr> {
        if let Some(size) = size {
            self.with_data(ino, |data, _| {
                data.truncate(size);
                Ok(())
            })?;
        }
        let node = self.node_mut(ino)?;
        if let Some(mode) = mode {
            node.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = uid {
            node.uid = uid;
        }
        if let Some(gid) = gid {
            node.gid = gid;
        }
        if let Some(atime) = atime {
            node.atime = atime;
        }
        let now = SystemTime::now();
        if let Some(mtime) = mtime {
            node.mtime = mtime;
        } else if size.is_some() {
            node.mtime = now;
        }
        node.ctime = now;
        self.attr(ino)
    }

    pub(super) fn open_handle(&mut self, ino: u64) -> Fallible<u64> {
        let listing = match &self.node(ino)?.body {
            Body::Dir { live, .. } => {
                let parent = self.node(ino)?.live_names.iter().next().map_or(ROOT, |(p, _)| *p);
                let mut listing =
                    vec![(ino, FileType::Directory, ".".into()), (parent, FileType::Directory, "..".into())];
                for (name, &child) in live {
                    let kind = self.node(child)?.kind().file_type();
                    listing.push((child, kind, name.clone()));
                }
                listing
            }
            _ => Vec::new(),
        };
        self.node_mut(ino)?.open += 1;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, Handle { ino, listing });
        Ok(handle)
    }

    /// A handle from before a cut (or never given) is refused: the program that held it is gone.
    fn handle(&self, handle: u64, ino: u64) -> Fallible<&Handle> {
        self.handles.get(&handle).filter(|h| h.ino == ino).ok_or(Errno::EIO)
    }

    pub(super) fn release(&mut self, handle: u64, ino: u64) -> Fallible<()> {
        if self.handles.remove(&handle).is_none() {
            return Ok(());
        }
        let node = self.node_mut(ino)?;
        node.open = node.open.saturating_sub(1);
        self.settle(ino)
    }

    pub(super) fn listing(&self, handle: u64, ino: u64) -> Fallible<&[(u64, FileType, OsString)]> {
        Ok(&self.handle(handle, ino)?.listing)
    }

    pub(super) fn read(&mut self, handle: u64, ino: u64, offset: u64, len: u32) -> Fallible<Vec<u8>> {
        self.handle(handle, ino)?;
        self.with_data(ino, |data, base| data.read(base, offset, len as u64))
    }

    pub(super) fn write(&mut self, handle: u64, ino: u64, offset: u64, bytes: &[u8]) -> Fallible<u32> {
        self.handle(handle, ino)?;
        self.with_data(ino, |data, base| data.write(base, offset, bytes))?;
        let node = self.node_mut(ino)?;
        let now = SystemTime::now();
        node.mtime = now;
        node.ctime = now;
        Ok(bytes.len() as u32)
    }

    pub(super) fn statfs(&self) -> Fallible<libc::statvfs> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.backing.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: statvfs fills the zeroed struct for a valid C string path.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(io_errno(io::Error::last_os_error()));
        }
        Ok(stat)
    }

    // ---- what fsync makes durable ----

    /// fsync/fdatasync of a file: its content, size and mode become durable (its names do not).
    pub(super) fn sync_file(&mut self, handle: u64, ino: u64) -> Fallible<()> {
        self.handle(handle, ino)?;
        match self.node(ino)?.kind() {
            Kind::Dir => return self.sync_dir(handle, ino),
            Kind::Symlink => return Ok(()),
            Kind::File => {}
        }
        self.flush_file(ino).map_err(io_errno)?;
        self.totals.file_syncs += 1;
        Ok(())
    }

    fn flush_file(&mut self, ino: u64) -> io::Result<()> {
        let gone = || io::Error::other("no such inode");
        if self.path_of(ino).is_none() {
            let perm = self.nodes.get(&ino).ok_or_else(gone)?.perm;
            let path = self.orphans.join(ino.to_string());
            OpenOptions::new().write(true).create_new(true).mode(perm as u32).open(&path)?;
            let node = self.nodes.get_mut(&ino).ok_or_else(gone)?;
            node.orphan = true;
            if let Body::File(data) = &mut node.body {
                data.durable_len = 0;
                data.file = None;
            }
        }
        let cached = match &mut self.nodes.get_mut(&ino).ok_or_else(gone)?.body {
            Body::File(data) => data.file.take(),
            _ => return Err(io::Error::other("not a file")),
        };
        let durable = match cached {
            Some(file) => file,
            None => self.open_durable(ino)?.ok_or_else(|| io::Error::other("no durable place"))?,
        };
        let node = self.nodes.get_mut(&ino).ok_or_else(gone)?;
        let (perm, uid, gid, mtime, keep) = (node.perm, node.uid, node.gid, node.mtime, node.open > 0);
        let Body::File(data) = &mut node.body else { return Err(io::Error::other("not a file")) };
        let flushed = data.flush(&durable);
        apply_owner_and_mode(&durable, perm, uid, gid);
        let _ = durable.set_modified(mtime);
        if keep {
            data.file = Some(durable);
        }
        flushed
    }

    /// fsync of a folder: each name it holds now is durable afterwards, for the thing it names
    /// now, and each name it no longer holds is gone from the durable tree.
    pub(super) fn sync_dir(&mut self, handle: u64, dir: u64) -> Fallible<()> {
        self.handle(handle, dir)?;
        if self.path_of(dir).is_none() {
            let path = self.orphans.join(dir.to_string());
            fs::create_dir(&path).map_err(io_errno)?;
            self.node_mut(dir)?.orphan = true;
        }
        let mut names: BTreeSet<OsString> = self.live(dir)?.keys().cloned().collect();
        names.extend(self.durable(dir)?.keys().cloned());
        for name in names {
            let live = self.live(dir)?.get(&name).copied();
            let durable = self.durable(dir)?.get(&name).copied();
            if live == durable {
                continue;
            }
            match live {
                Some(ino) => self.add_durable(dir, &name, ino)?,
                None => self.drop_durable(dir, &name)?,
            }
        }
        if let Some(path) = self.path_of(dir) {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(self.node(dir)?.perm as u32));
        }
        self.totals.dir_syncs += 1;
        Ok(())
    }

    /// Makes `dir/name` durably name `ino`: moved from a durable name it no longer has (a rename),
    /// linked from one it still has, taken from the orphans, or created empty.
    fn add_durable(&mut self, dir: u64, name: &OsStr, ino: u64) -> Fallible<()> {
        if self.durable(dir)?.contains_key(name) {
            self.drop_durable(dir, name)?;
        }
        if self.durable(dir)?.get(name) == Some(&ino) {
            return Ok(());
        }
        let dest = self.path_of(dir).ok_or(Errno::EIO)?.join(name);
        let node = self.node(ino)?;
        let stale: Vec<(u64, OsString)> = node
            .durable_names
            .iter()
            .filter(|(parent, old)| self.live(*parent).ok().and_then(|l| l.get(old)) != Some(&ino))
            .cloned()
            .collect();
        if let Some((parent, old)) = stale.first() {
            if node.kind() == Kind::Dir && self.durably_within(dir, ino) {
                // A folder moved into what was durably its own subfolder: not modelled.
                return Err(Errno::EINVAL);
            }
            let from = self.path_of(*parent).ok_or(Errno::EIO)?.join(old);
            fs::rename(&from, &dest).map_err(io_errno)?;
            self.durable_mut(*parent)?.remove(old);
            self.node_mut(ino)?.durable_names.remove(&(*parent, old.clone()));
        } else if !node.durable_names.is_empty() {
            let from = self.path_of(ino).ok_or(Errno::EIO)?;
            fs::hard_link(&from, &dest).map_err(io_errno)?;
        } else if node.orphan {
            let from = self.orphans.join(ino.to_string());
            fs::rename(&from, &dest).map_err(io_errno)?;
            self.node_mut(ino)?.orphan = false;
        } else {
            let (perm, uid, gid) = (node.perm, node.uid, node.gid);
            match &node.body {
                Body::File(_) => {
                    let file = OpenOptions::new().write(true).create_new(true).mode(perm as u32).open(&dest);
                    apply_owner_and_mode(&file.map_err(io_errno)?, perm, uid, gid);
                    self.data_mut(ino)?.durable_len = 0;
                }
                Body::Dir { .. } => {
                    fs::create_dir(&dest).map_err(io_errno)?;
                    let _ = fs::set_permissions(&dest, fs::Permissions::from_mode(perm as u32));
                    let _ = std::os::unix::fs::lchown(&dest, Some(uid), Some(gid));
                }
                Body::Symlink(target) => {
                    std::os::unix::fs::symlink(target, &dest).map_err(io_errno)?;
                    let _ = std::os::unix::fs::lchown(&dest, Some(uid), Some(gid));
                }
            }
        }
        self.durable_mut(dir)?.insert(name.to_owned(), ino);
        self.node_mut(ino)?.durable_names.insert((dir, name.to_owned()));
        for (parent, old) in stale.iter().skip(1) {
            self.drop_durable(*parent, old)?;
        }
        Ok(())
    }

    /// Removes `dir/name` from the durable tree.
    fn drop_durable(&mut self, dir: u64, name: &OsStr) -> Fallible<()> {
        let path = self.path_of(dir).ok_or(Errno::EIO)?.join(name);
        let ino = self.durable_mut(dir)?.remove(name).ok_or(Errno::EIO)?;
        let node = self.node_mut(ino)?;
        node.durable_names.remove(&(dir, name.to_owned()));
        if !node.durable_names.is_empty() {
            // Another hard link keeps the content.
            return fs::remove_file(&path).map_err(io_errno);
        }
        self.lost_last_name(ino, dir, name)
    }

    /// `ino`'s last durable name (`dir/old`, where its content still lies) is gone. If it was renamed
    /// to a folder that has a durable place, the rename is carried there as a whole (a rename is one
    /// operation in both folders); if a program can still reach it, its content waits among the
    /// orphans; else it is thrown away.
    fn lost_last_name(&mut self, ino: u64, dir: u64, old: &OsStr) -> Fallible<()> {
        let target = {
            let node = self.node(ino)?;
            node.live_names
                .iter()
                .find(|(parent, name)| {
                    self.durable(*parent).ok().and_then(|d| d.get(name)) != Some(&ino)
                        && self.path_of(*parent).is_some()
                })
                .cloned()
        };
        if let Some((parent, name)) = target {
            if self.durable(parent)?.contains_key(&name) {
                self.drop_durable(parent, &name)?;
            }
            // Computed after the displacement, which may have moved the folder it lies in.
            let from = self.path_of(dir).ok_or(Errno::EIO)?.join(old);
            let dest = self.path_of(parent).ok_or(Errno::EIO)?.join(&name);
            fs::rename(&from, &dest).map_err(io_errno)?;
            self.durable_mut(parent)?.insert(name.clone(), ino);
            self.node_mut(ino)?.durable_names.insert((parent, name));
            return Ok(());
        }
        let from = self.path_of(dir).ok_or(Errno::EIO)?.join(old);
        fs::rename(&from, self.orphans.join(ino.to_string())).map_err(io_errno)?;
        self.node_mut(ino)?.orphan = true;
        if !self.node(ino)?.alive() {
            self.discard(ino)?;
        }
        Ok(())
    }

    /// Throws away a thing nothing can reach, live or durable: its orphaned content (a folder's
    /// durable entries first, which may still be reachable elsewhere) and its unsynced data.
    fn discard(&mut self, ino: u64) -> Fallible<()> {
        if let Body::Dir { durable, .. } = &self.node(ino)?.body {
            let names: Vec<OsString> = durable.keys().cloned().collect();
            for name in names {
                self.drop_durable(ino, &name)?;
            }
        }
        let node = self.node_mut(ino)?;
        if let Body::File(data) = &mut node.body {
            *data = Data::default();
        }
        let (orphan, kind) = (node.orphan, node.kind());
        node.orphan = false;
        if orphan {
            let path = self.orphans.join(ino.to_string());
            let removed = if kind == Kind::Dir { fs::remove_dir(&path) } else { fs::remove_file(&path) };
            removed.map_err(io_errno)?;
        }
        Ok(())
    }

    // ---- the cut ----

    /// What a cut now would throw away.
    pub(super) fn pending(&self) -> CutReport {
        let mut report = CutReport::default();
        for node in self.nodes.values() {
            match &node.body {
                Body::File(data) if data.dirty() => {
                    report.files_dropped += 1;
                    report.writes_dropped += data.writes;
                    report.bytes_dropped += data.bytes;
                    report.truncations_dropped += data.truncations;
                }
                Body::Dir { live, durable } => {
                    let names: BTreeSet<&OsString> = live.keys().chain(durable.keys()).collect();
                    report.entries_dropped += names.iter().filter(|n| live.get(**n) != durable.get(**n)).count() as u64;
                }
                _ => {}
            }
        }
        report
    }

    /// The power cut: everything not durable is gone, and the mount shows the backing folder as it
    /// is. With `torn`, each file's unsynced data is either all lost or (at random) all written but
    /// for the tail of its last write, cut at a sector boundary.
    pub(super) fn cut(&mut self, mut torn: Option<Rng>) -> io::Result<CutReport> {
        let mut report = self.pending();
        if let Some(rng) = torn.as_mut() {
            let mut dirty: Vec<u64> = self
                .nodes
                .iter()
                .filter(|(_, n)| matches!(&n.body, Body::File(d) if d.dirty()) && !n.durable_names.is_empty())
                .map(|(&ino, _)| ino)
                .collect();
            dirty.sort_unstable();
            for ino in dirty {
                if rng.below(2) == 0 {
                    continue;
                }
                let base = self.open_durable(ino)?;
                let Body::File(data) = &mut self.nodes.get_mut(&ino).expect("listed above").body else { continue };
                let (writes, bytes, truncations) = (data.writes, data.bytes, data.truncations);
                let (kept, lost) = data.tear(base.as_ref(), rng)?;
                if let Some(durable) = base.as_ref() {
                    data.flush(durable)?;
                }
                report.torn_files += 1;
                report.torn_bytes_kept += kept;
                report.files_dropped -= 1;
                report.writes_dropped -= writes - u64::from(lost > 0);
                report.bytes_dropped -= bytes - lost;
                report.truncations_dropped -= truncations;
            }
        }
        self.totals.cuts += 1;
        self.totals.dropped.add(&report);
        self.load()?;
        Ok(report)
    }

    pub(super) fn remove_orphans(&self) {
        let _ = fs::remove_dir_all(&self.orphans);
    }
}

fn apply_owner_and_mode(file: &File, perm: u16, uid: u32, gid: u32) {
    if let Ok(md) = file.metadata() {
        if (md.mode() & 0o7777) as u16 != perm {
            let _ = file.set_permissions(fs::Permissions::from_mode(perm as u32));
        }
        if md.uid() != uid || md.gid() != gid {
            // Only root may give a file away; elsewhere the owner stays the tester.
            let _ = std::os::unix::fs::fchown(file, Some(uid), Some(gid));
        }
    }
}
