//! halite's file operations: on descriptors, never following a link that
//! someone other than root (or this process's own user) could have placed;
//! and the one atomic write every halite component uses.
//!
//! Why: the agent runs as root and manages files in directories other users
//! may write. Anything that names a path twice (inspect, then open; open,
//! then chmod) can be raced: in between, the path can become a link to a
//! root-only file, and root then reads or chmods that file for the user.
//! So, here:
//! - a directory is reached by [`Dir::open`], one component at a time,
//!   each opened `O_DIRECTORY|O_NOFOLLOW` relative to the one before; a link
//!   on the way is followed only when nobody but root or us could have put
//!   it there ([`trusted_link`]): `/var/run -> /run` works, a link planted
//!   in a user's directory is refused;
//! - everything inside a directory is done relative to its descriptor
//!   (`openat`, `fstatat`, `renameat`, `unlinkat`, `mkdirat`, `symlinkat`),
//!   and the last component is never followed;
//! - a file's mode and owner are set with `fchmod`/`fchown` on a descriptor
//!   opened `O_NOFOLLOW` and checked with `fstat` ([`OpenFile`]).
//!
//! # The atomic write
//! [`Dir::write_atomic`] (and [`write_atomic`] by path) follows one rule: a
//! temporary file `.halite-<16 hex digits>.<name>` is created beside the
//! target (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600), its owner and mode are
//! set on its descriptor, the content is written, the file is fsynced, it
//! is renamed over the target and the directory is fsynced. Readers see
//! the old content or the new, never a mix, and after a crash the new
//! content is either all there or not at all.
//!
//! A writer killed half-way leaves its temporary file. The next write of
//! the same name removes it ([`Dir::remove_stale_temps`]: first, or, on a
//! thread that holds its tidying for after its answer, then: [`tidy`]); the name
//! pattern is precise (this prefix, exactly 16 lowercase hex digits, a dot,
//! the target's own name), so nothing else in the directory is touched, and
//! a temporary file another thread of this process is writing right now
//! is skipped.

pub mod strict;

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

pub mod hops;
pub mod lock;
pub mod tidy;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

/// What went wrong, with the path it went wrong on.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot {op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is a symbolic link; halite does not follow it (remove it, or manage the link itself with file.symlink)"
    )]
    Link { path: PathBuf },
    #[error("{path} is a symbolic link in a directory other users can write; halite does not follow it")]
    UntrustedLink { path: PathBuf },
    #[error("{path} is a {found}, not a {expected}")]
    WrongType { path: PathBuf, found: &'static str, expected: &'static str },
    #[error("{path} changed between inspection and change; left alone (the next run looks again)")]
    Changed { path: PathBuf },
    #[error("{path}: too many symbolic links or retries on the way")]
    TooManySteps { path: PathBuf },
    #[error("{path} names no file")]
    NoName { path: PathBuf },
    #[error(
        "{path} has {links} names (hard links); halite does not edit it in place, since another name may be a file it must not disclose"
    )]
    HardLinked { path: PathBuf, links: u64 },
    #[error("{path} is larger than {limit} bytes; halite does not edit it in place")]
    TooLarge { path: PathBuf, limit: u64 },
}

impl FsError {
    /// The path, or a directory on the way to it, does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    fn io(op: &'static str, path: impl Into<PathBuf>, errno: Errno) -> FsError {
        FsError::Io { op, path: path.into(), source: errno.into() }
    }

    fn std(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> FsError {
        FsError::Io { op, path: path.into(), source }
    }
}

/// What is at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Link,
    /// A device, FIFO or socket.
    Other,
}

impl FileType {
    fn describe(self) -> &'static str {
        match self {
            FileType::File => "regular file",
            FileType::Dir => "directory",
            FileType::Link => "symbolic link",
            FileType::Other => "special file",
        }
    }
}

/// An `fstat`/`fstatat` result, the parts halite uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub file_type: FileType,
    /// Permission bits, `0o7777` at most.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    dev: u64,
    ino: u64,
}

impl Stat {
    /// Both name the same inode.
    pub fn same_file(&self, other: &Stat) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

// The field widths of `struct stat` differ between targets.
#[allow(clippy::unnecessary_cast)]
fn stat_of(st: FileStat) -> Stat {
    let format = st.st_mode as u32 & SFlag::S_IFMT.bits() as u32;
    let file_type = if format == SFlag::S_IFREG.bits() as u32 {
        FileType::File
    } else if format == SFlag::S_IFDIR.bits() as u32 {
        FileType::Dir
    } else if format == SFlag::S_IFLNK.bits() as u32 {
        FileType::Link
    } else {
        FileType::Other
    };
    Stat {
        file_type,
        mode: st.st_mode as u32 & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: u64::try_from(st.st_size).unwrap_or(0),
        nlink: st.st_nlink as u64,
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
    }
}

/// Mode and owner for a file being written; `None` leaves the owner as
/// created (the writing process's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Perms {
    pub fn mode(mode: u32) -> Perms {
        Perms { mode, uid: None, gid: None }
    }
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);
/// `O_NONBLOCK`: opening a FIFO planted at the name must not hang the agent.
const READ_FLAGS: OFlag =
    OFlag::O_RDONLY.union(OFlag::O_NOFOLLOW).union(OFlag::O_NONBLOCK).union(OFlag::O_NOCTTY).union(OFlag::O_CLOEXEC);
/// Links followed, directories created and names retried on one walk.
const MAX_STEPS: usize = 64;

/// An open directory, reached without following an untrusted link. All
/// operations are relative to its descriptor and never follow the last
/// component.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// As asked for, for messages.
    path: PathBuf,
}

/// True when only root or this process's user could have made or replaced
/// `link` in `dir`: the directory is theirs and nobody else may write it,
/// or it is sticky (others may write, but not replace entries they do not
/// own) and the link is theirs.
pub fn trusted_link(dir: &Stat, link: &Stat) -> bool {
    let euid = nix::unistd::geteuid().as_raw();
    let ours = |uid: u32| uid == 0 || uid == euid;
    ours(dir.uid) && (dir.mode & 0o022 == 0 || (dir.mode & 0o1000 != 0 && ours(link.uid)))
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn open_start(absolute: bool, shown: &Path) -> Result<OwnedFd, FsError> {
    let start = if absolute { Path::new("/") } else { Path::new(".") };
    nix::fcntl::open(start, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| FsError::io("open", shown, e))
}

impl Dir {
    /// Opens the directory at `path` (see the module doc for which links
    /// are followed on the way).
    pub fn open(path: &Path) -> Result<Dir, FsError> {
        Dir::walk(path, None)
    }

    /// Opens the directory at `path`, creating what is missing with `mode`
    /// (less the umask), like `mkdir -p`.
    pub fn create_all(path: &Path, mode: u32) -> Result<Dir, FsError> {
        Dir::walk(path, Some(mode))
    }

    fn walk(path: &Path, create: Option<u32>) -> Result<Dir, FsError> {
        let mut fd = open_start(path.is_absolute(), path)?;
        let mut pending = components(path);
        let mut shown = if path.is_absolute() { PathBuf::from("/") } else { PathBuf::new() };
        let mut steps = 0;
        while let Some(name) = pending.pop_front() {
            let here = shown.join(&name);
            match nix::fcntl::openat(&fd, name.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Ok(next) => {
                    fd = next;
                    shown = here;
                    continue;
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let entry = nix::sys::stat::fstatat(&fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map(stat_of)
                        .map_err(|e| FsError::io("inspect", &here, e))?;
                    if entry.file_type != FileType::Link {
                        return Err(FsError::WrongType {
                            path: here,
                            found: entry.file_type.describe(),
                            expected: "directory",
                        });
                    }
                    let dir = nix::sys::stat::fstat(&fd).map(stat_of).map_err(|e| FsError::io("inspect", &shown, e))?;
                    if !trusted_link(&dir, &entry) {
                        return Err(FsError::UntrustedLink { path: here });
                    }
                    let target = PathBuf::from(
                        nix::fcntl::readlinkat(&fd, name.as_os_str())
                            .map_err(|e| FsError::io("read the link", &here, e))?,
                    );
                    let mut rest = components(&target);
                    rest.extend(pending);
                    pending = rest;
                    if target.is_absolute() {
                        fd = open_start(true, path)?;
                    }
                }
                Err(Errno::ENOENT) if let Some(mode) = create => {
                    match nix::sys::stat::mkdirat(&fd, name.as_os_str(), Mode::from_bits_truncate(mode)) {
                        Ok(()) | Err(Errno::EEXIST) => pending.push_front(name),
                        Err(e) => return Err(FsError::io("create the directory", here, e)),
                    }
                }
                Err(e) => return Err(FsError::io("open the directory", here, e)),
            }
            steps += 1;
            if steps > MAX_STEPS {
                return Err(FsError::TooManySteps { path: path.to_path_buf() });
            }
        }
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn join(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// The directory itself.
    pub fn stat(&self) -> Result<Stat, FsError> {
        nix::sys::stat::fstat(&self.fd).map(stat_of).map_err(|e| FsError::io("inspect", &self.path, e))
    }

    /// What is at `name`, the name itself (a link is a link); `None` when
    /// nothing is.
    pub fn entry(&self, name: &OsStr) -> Result<Option<Stat>, FsError> {
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(stat_of(st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(FsError::io("inspect", self.join(name), e)),
        }
    }

    /// Opens the regular file at `name` for reading; a link there is
    /// [`FsError::Link`], anything else not a regular file is
    /// [`FsError::WrongType`]; `None` when nothing is there.
    pub fn open_file(&self, name: &OsStr) -> Result<Option<OpenFile>, FsError> {
        let path = self.join(name);
        let fd = match nix::fcntl::openat(&self.fd, name, READ_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(FsError::Link { path }),
            Err(e) => return Err(FsError::io("open", path, e)),
        };
        let stat = nix::sys::stat::fstat(&fd).map(stat_of).map_err(|e| FsError::io("inspect", &path, e))?;
        if stat.file_type != FileType::File {
            return Err(FsError::WrongType { path, found: stat.file_type.describe(), expected: "regular file" });
        }
        Ok(Some(OpenFile { file: File::from(fd), stat, path }))
    }

    /// Opens the directory at `name`; a link there is [`FsError::Link`].
    pub fn open_dir(&self, name: &OsStr) -> Result<Option<Dir>, FsError> {
        let path = self.join(name);
        match nix::fcntl::openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir { fd, path })),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ELOOP) => Err(FsError::Link { path }),
            // A link to something other than a directory is ENOTDIR.
            Err(Errno::ENOTDIR) => match self.entry(name)? {
                Some(Stat { file_type: FileType::Link, .. }) => Err(FsError::Link { path }),
                found => Err(FsError::WrongType {
                    path,
                    found: found.map_or("missing", |s| s.file_type.describe()),
                    expected: "directory",
                }),
            },
            Err(e) => Err(FsError::io("open the directory", path, e)),
        }
    }

    /// Creates the directory `name` with `mode` (less the umask) and opens it.
    pub fn create_dir(&self, name: &OsStr, mode: u32) -> Result<Dir, FsError> {
        nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(mode))
            .map_err(|e| FsError::io("create the directory", self.join(name), e))?;
        self.open_dir(name)?.ok_or_else(|| FsError::Changed { path: self.join(name) })
    }

    /// Sets the directory's own mode (`fchmod`).
    pub fn set_mode(&self, mode: u32) -> Result<(), FsError> {
        nix::sys::stat::fchmod(&self.fd, Mode::from_bits_truncate(mode))
            .map_err(|e| FsError::io("set the mode of", &self.path, e))
    }

    /// Sets the directory's own owner (`fchown`).
    pub fn set_owner(&self, uid: Option<u32>, gid: Option<u32>) -> Result<(), FsError> {
        nix::unistd::fchown(&self.fd, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
            .map_err(|e| FsError::io("set the owner of", &self.path, e))
    }

    /// Where the link at `name` points.
    pub fn read_link(&self, name: &OsStr) -> Result<PathBuf, FsError> {
        nix::fcntl::readlinkat(&self.fd, name)
            .map(PathBuf::from)
            .map_err(|e| FsError::io("read the link", self.join(name), e))
    }

    /// Makes `name` a link to `target`: made beside it and renamed over it,
    /// so there is never a moment without a link, and a file at `name` is
    /// replaced, not written through.
    pub fn symlink_atomic(&self, target: &Path, name: &OsStr) -> Result<(), FsError> {
        self.remove_stale_temps_later(name);
        let temp = self.create_temp(name, |temp| nix::unistd::symlinkat(target, &self.fd, temp))?;
        self.commit(temp, name, true)
    }

    /// Removes `name`: a file or link is unlinked, a directory removed with
    /// everything in it, never following a link inside.
    pub fn remove(&self, name: &OsStr) -> Result<(), FsError> {
        let Some(entry) = self.entry(name)? else { return Ok(()) };
        if entry.file_type == FileType::Dir
            && let Some(child) = self.open_dir(name)?
        {
            child.remove_contents()?;
            return match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(FsError::io("remove", self.join(name), e)),
            };
        }
        match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(FsError::io("remove", self.join(name), e)),
        }
    }

    fn remove_contents(&self) -> Result<(), FsError> {
        for name in self.names()? {
            self.remove(&name)?;
        }
        Ok(())
    }

    /// The names in this directory, without `.` and `..`.
    pub fn names(&self) -> Result<Vec<OsString>, FsError> {
        let list = nix::dir::Dir::openat(
            &self.fd,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::io("list", &self.path, e))?;
        let mut names = Vec::new();
        for entry in list {
            let entry = entry.map_err(|e| FsError::io("list", &self.path, e))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_os_string());
            }
        }
        Ok(names)
    }

    /// Writes `content` into the existing regular file `name`, in place
    /// (truncated first): for kernel interfaces such as `/proc/sys`,
    /// which cannot be replaced by a rename. A link at `name` is
    /// [`FsError::Link`]; nothing is created.
    pub fn write_in_place(&self, name: &OsStr, content: &[u8]) -> Result<(), FsError> {
        use std::io::Write;
        let path = self.join(name);
        let flags = OFlag::O_WRONLY | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(FsError::Link { path }),
            Err(e) => return Err(FsError::io("open for writing", path, e)),
        };
        let mut file = File::from(fd);
        let stat = nix::sys::stat::fstat(&file).map(stat_of).map_err(|e| FsError::io("inspect", &path, e))?;
        if stat.file_type != FileType::File {
            return Err(FsError::WrongType { path, found: stat.file_type.describe(), expected: "regular file" });
        }
        file.write_all(content).map_err(|e| FsError::std("write", &path, e))
    }

    /// Replaces `name` with `content`, atomically (the module doc's rule).
    /// `name` may be a link: the link is replaced, not written through.
    pub fn write_atomic(&self, name: &OsStr, content: &mut dyn Read, perms: Perms) -> Result<(), FsError> {
        self.write_atomic_as(name, content, perms, true)
    }

    /// As [`Dir::write_atomic`] without either fsync: readers still see
    /// the old content or the new, and a crash of the process leaves one or
    /// the other, but after a power cut the new name may be missing, or
    /// hold an empty file. For copies nothing waits on (the agent's
    /// backups of replaced content), which would otherwise put two fsyncs
    /// on the path of every restore.
    pub fn write_atomic_unsynced(&self, name: &OsStr, content: &mut dyn Read, perms: Perms) -> Result<(), FsError> {
        self.write_atomic_as(name, content, perms, false)
    }

    fn write_atomic_as(
        &self,
        name: &OsStr,
        content: &mut dyn Read,
        perms: Perms,
        durable: bool,
    ) -> Result<(), FsError> {
        self.remove_stale_temps_later(name);
        let mut fd = None;
        let temp = self.create_temp(name, |temp| {
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            fd = Some(nix::fcntl::openat(&self.fd, temp, flags, Mode::from_bits_truncate(0o600))?);
            Ok(())
        })?;
        let mut file = File::from(fd.take().ok_or_else(|| FsError::Changed { path: self.join(name) })?);
        let shown = self.join(name);
        // Owner first: chown clears set-id bits the mode may ask for.
        if perms.uid.is_some() || perms.gid.is_some() {
            nix::unistd::fchown(&file, perms.uid.map(Uid::from_raw), perms.gid.map(Gid::from_raw))
                .map_err(|e| FsError::io("set the owner of a temporary file for", &shown, e))?;
        }
        nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(perms.mode))
            .map_err(|e| FsError::io("set the mode of a temporary file for", &shown, e))?;
        std::io::copy(content, &mut file).map_err(|e| FsError::std("write", &shown, e))?;
        if durable {
            file.sync_all().map_err(|e| FsError::std("flush", &shown, e))?;
            hops::mark_current("agent.fsync.file");
        }
        drop(file);
        self.commit(temp, name, durable)
    }

    /// Creates a fresh temporary name for `name` with `make` (which fails
    /// with `EEXIST` when the name is taken), registered as in flight.
    fn create_temp(&self, name: &OsStr, mut make: impl FnMut(&OsStr) -> nix::Result<()>) -> Result<Temp<'_>, FsError> {
        let dir = self.stat()?;
        for _ in 0..MAX_STEPS {
            let temp_name = temp_name(random(), name);
            match make(&temp_name) {
                Ok(()) => {
                    let key = (dir.dev, dir.ino, temp_name.clone());
                    in_flight().push(key.clone());
                    return Ok(Temp { dir: self, name: temp_name, key, committed: false });
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(FsError::io("create a temporary file beside", self.join(name), e)),
            }
        }
        Err(FsError::TooManySteps { path: self.join(name) })
    }

    fn commit(&self, mut temp: Temp<'_>, name: &OsStr, durable: bool) -> Result<(), FsError> {
        nix::fcntl::renameat(&self.fd, temp.name.as_os_str(), &self.fd, name)
            .map_err(|e| FsError::io("replace", self.join(name), e))?;
        temp.committed = true;
        hops::mark_current("agent.rename");
        if !durable {
            return Ok(());
        }
        // The rename is durable only once the directory is on disk.
        nix::unistd::fsync(&self.fd).map_err(|e| FsError::io("flush the directory", &self.path, e))?;
        hops::mark_current("agent.fsync.dir");
        Ok(())
    }

    /// [`Dir::remove_stale_temps`] now, or after the thread's answer when
    /// it holds its tidying ([`tidy`]); a new temporary name never collides
    /// with a stale one (`O_EXCL`, a fresh random part), so nothing in
    /// between depends on the removal.
    fn remove_stale_temps_later(&self, name: &OsStr) {
        match self.fd.try_clone() {
            Ok(fd) => {
                let (dir, name) = (Dir { fd, path: self.path.clone() }, name.to_owned());
                tidy::later(move || {
                    dir.remove_stale_temps(&name);
                });
            }
            Err(_) => {
                self.remove_stale_temps(name);
            }
        }
    }

    /// Removes the temporary files an interrupted write of `name` left
    /// here (the precise pattern of the module doc; files and links only,
    /// and not those this process is writing now). Returns how many.
    /// Failures are ignored: the next write tries again.
    pub fn remove_stale_temps(&self, name: &OsStr) -> usize {
        let (Ok(names), Ok(dir)) = (self.names(), self.stat()) else { return 0 };
        let mut removed = 0;
        for candidate in names.iter().filter(|n| is_temp_of(n, name)) {
            if in_flight().iter().any(|(dev, ino, n)| (*dev, *ino) == (dir.dev, dir.ino) && n == candidate) {
                continue;
            }
            let is_file_or_link =
                matches!(self.entry(candidate), Ok(Some(s)) if matches!(s.file_type, FileType::File | FileType::Link));
            if is_file_or_link
                && nix::unistd::unlinkat(&self.fd, candidate.as_os_str(), UnlinkatFlags::NoRemoveDir).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }
}

/// A temporary file being written: removed unless committed, and
/// registered in flight until then.
struct Temp<'a> {
    dir: &'a Dir,
    name: OsString,
    key: (u64, u64, OsString),
    committed: bool,
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = nix::unistd::unlinkat(&self.dir.fd, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        in_flight().retain(|key| *key != self.key);
    }
}

/// Temporary files this process is writing: (directory dev, inode, name).
static IN_FLIGHT: Mutex<Vec<(u64, u64, OsString)>> = Mutex::new(Vec::new());

fn in_flight() -> std::sync::MutexGuard<'static, Vec<(u64, u64, OsString)>> {
    IN_FLIGHT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const TEMP_PREFIX: &str = ".halite-";
/// A name is at most 255 bytes; the prefix, 16 digits and a dot take 25.
const TEMP_NAME_ROOM: usize = 255 - 25;

fn temp_name(random: u64, name: &OsStr) -> OsString {
    let bytes = name.as_bytes();
    let mut temp = format!("{TEMP_PREFIX}{random:016x}.").into_bytes();
    temp.extend_from_slice(&bytes[..bytes.len().min(TEMP_NAME_ROOM)]);
    OsStr::from_bytes(&temp).to_os_string()
}

/// Whether `candidate` is a temporary file of a write of `name`.
pub fn is_temp_of(candidate: &OsStr, name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    let Some(rest) = candidate.as_bytes().strip_prefix(TEMP_PREFIX.as_bytes()) else { return false };
    let (digits, rest) = rest.split_at(rest.len().min(16));
    digits.len() == 16
        && digits.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && rest.strip_prefix(b".") == Some(&bytes[..bytes.len().min(TEMP_NAME_ROOM)])
}

/// 64 random bits from the standard library's per-process random keys.
fn random() -> u64 {
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// A regular file opened `O_NOFOLLOW` relative to its directory, with the
/// `fstat` of that descriptor: reading it and changing its mode or owner
/// act on exactly the inode that was inspected.
#[derive(Debug)]
pub struct OpenFile {
    file: File,
    stat: Stat,
    path: PathBuf,
}

impl OpenFile {
    pub fn stat(&self) -> Stat {
        self.stat
    }

    /// The descriptor, for reading (`&File` reads and seeks).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn set_mode(&self, mode: u32) -> Result<(), FsError> {
        nix::sys::stat::fchmod(&self.file, Mode::from_bits_truncate(mode))
            .map_err(|e| FsError::io("set the mode of", &self.path, e))
    }

    pub fn set_owner(&self, uid: Option<u32>, gid: Option<u32>) -> Result<(), FsError> {
        nix::unistd::fchown(&self.file, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
            .map_err(|e| FsError::io("set the owner of", &self.path, e))
    }
}

impl AsFd for OpenFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A regular file's content read through one descriptor, for a change
/// that edits it (a line replaced, a block appended), and the atomic
/// replacement of that content: the one way halite's edit-in-place kinds
/// read and write a file.
///
/// The directory is reached with [`Dir::open`], the file opened
/// `O_NOFOLLOW` in it (a link at the name is [`FsError::Link`]) and read to
/// its end through that descriptor. [`Editable::replace`] writes only if
/// the name still leads to the file read and its content is what was read
/// (else [`FsError::Changed`]): an edit is never made to content nobody
/// planned on.
#[derive(Debug)]
pub struct Editable {
    path: PathBuf,
    /// `None` when the directory does not exist.
    dir: Option<Dir>,
    name: OsString,
    /// The file as opened and its content; `None` when there is no file.
    current: Option<(OpenFile, Vec<u8>)>,
}

impl Editable {
    /// Reads the file at `path`. A file larger than `limit` bytes is
    /// [`FsError::TooLarge`]; a file with other names is
    /// [`FsError::HardLinked`] (another name may be a file the reader must
    /// not see, so it is not read).
    pub fn read(path: &Path, limit: u64) -> Result<Editable, FsError> {
        let (dir, name) = match open_parent(path, None) {
            Ok((dir, name)) => (Some(dir), name),
            Err(e) if e.is_not_found() => {
                let name = path.file_name().ok_or_else(|| FsError::NoName { path: path.to_path_buf() })?;
                (None, name.to_os_string())
            }
            Err(e) => return Err(e),
        };
        let current = match &dir {
            Some(dir) => match dir.open_file(&name)? {
                Some(file) => {
                    let content = read_whole(&file, path, limit)?;
                    Some((file, content))
                }
                None => None,
            },
            None => None,
        };
        Ok(Editable { path: path.to_path_buf(), dir, name, current })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The content read; `None` when there is no file.
    pub fn content(&self) -> Option<&[u8]> {
        self.current.as_ref().map(|(_, content)| content.as_slice())
    }

    /// The file's `fstat` as read; `None` when there is no file.
    pub fn stat(&self) -> Option<Stat> {
        self.current.as_ref().map(|(file, _)| file.stat())
    }

    /// Replaces the file with `content`, atomically, keeping the mode and
    /// owner of the file read; a new file gets `new_file` (missing
    /// directories made, mode 0755, when `makedirs`). Fails with
    /// [`FsError::Changed`] when the name no longer leads to the file read,
    /// or its content changed since.
    pub fn replace(&self, content: &[u8], new_file: Perms, makedirs: bool) -> Result<(), FsError> {
        let changed = || FsError::Changed { path: self.path.clone() };
        let opened;
        let dir = match &self.dir {
            Some(dir) => dir,
            None => {
                let parent = self.path.parent().ok_or_else(|| FsError::NoName { path: self.path.clone() })?;
                opened = if makedirs { Dir::create_all(parent, 0o755) } else { Dir::open(parent) }?;
                &opened
            }
        };
        let perms = match &self.current {
            Some((file, read)) => {
                let now = dir.open_file(&self.name)?.ok_or_else(changed)?;
                let mut again = Vec::new();
                now.file()
                    .take(read.len() as u64 + 1)
                    .read_to_end(&mut again)
                    .map_err(|e| FsError::std("read", &self.path, e))?;
                if !now.stat().same_file(&file.stat()) || again != *read {
                    return Err(changed());
                }
                let stat = file.stat();
                Perms { mode: stat.mode, uid: Some(stat.uid), gid: Some(stat.gid) }
            }
            None => {
                if dir.entry(&self.name)?.is_some() {
                    return Err(changed());
                }
                new_file
            }
        };
        dir.write_atomic(&self.name, &mut &content[..], perms)
    }
}

/// The whole content of an opened file, at most `limit` bytes.
fn read_whole(file: &OpenFile, path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    let stat = file.stat();
    if stat.nlink > 1 {
        return Err(FsError::HardLinked { path: path.to_path_buf(), links: stat.nlink });
    }
    let mut content = Vec::new();
    file.file().take(limit + 1).read_to_end(&mut content).map_err(|e| FsError::std("read", path, e))?;
    if content.len() as u64 > limit {
        return Err(FsError::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(content)
}

/// The directory holding `path` (created with `create`'s mode when given
/// and missing) and the name in it.
pub fn open_parent(path: &Path, create: Option<u32>) -> Result<(Dir, OsString), FsError> {
    let name = path.file_name().ok_or_else(|| FsError::NoName { path: path.to_path_buf() })?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = match create {
        Some(mode) => Dir::create_all(parent, mode)?,
        None => Dir::open(parent)?,
    };
    Ok((dir, name.to_os_string()))
}

/// Replaces the file at `path` with `content` and `mode`, atomically (the
/// module doc's rule), creating missing parent directories (0755 less the
/// umask). The one way halite writes its own files: keys, records,
/// offline copies, backups, logs.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), FsError> {
    let (dir, name) = open_parent(path, Some(0o755))?;
    dir.write_atomic(&name, &mut &content[..], Perms::mode(mode))
}

/// Removes the temporary files interrupted writes of `path` left beside
/// it (see [`Dir::remove_stale_temps`]); the agent calls it at start for
/// every file it manages.
pub fn remove_stale_temps(path: &Path) -> Result<usize, FsError> {
    let (dir, name) = open_parent(path, None)?;
    Ok(dir.remove_stale_temps(&name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Fixture set-up in the test's own temporary directory: the path-based
    /// call clippy.toml bans elsewhere is safe here.
    #[allow(clippy::disallowed_methods)]
    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn temp_names_match_only_their_own_pattern() {
        let name = OsStr::new("conf");
        let temp = temp_name(0xabc, name);
        assert_eq!(temp, ".halite-0000000000000abc.conf");
        assert!(is_temp_of(&temp, name));
        for other in [
            ".halite-0000000000000abc.conf2",
            ".halite-0000000000000abc.con",
            ".halite-000000000000abc.conf",
            ".halite-0000000000000ABC.conf",
            ".halite-notes",
            "conf",
            ".halite-0000000000000abcXconf",
        ] {
            assert!(!is_temp_of(OsStr::new(other), name), "{other}");
        }
        let long = OsString::from("x".repeat(255));
        let temp = temp_name(1, &long);
        assert_eq!(temp.len(), 255);
        assert!(is_temp_of(&temp, &long));
    }

    #[test]
    fn the_atomic_write_replaces_a_link_without_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        chmod(&secret, 0o600);
        let path = dir.path().join("conf");
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        write_atomic(&path, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o7777, 0o600);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "a temporary file was left");
    }

    #[test]
    fn a_write_removes_stale_temps_of_its_own_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let stale = [".halite-0123456789abcdef.conf", ".halite-fedcba9876543210.conf"];
        let kept = [".halite-0123456789abcdef.other", ".halite-notes", "conf.bak"];
        for name in stale.iter().chain(&kept) {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.path().join(".halite-00000000000000aa.conf")).unwrap();
        write_atomic(&dir.path().join("conf"), b"c", 0o600).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(
            left,
            [".halite-00000000000000aa.conf", ".halite-0123456789abcdef.other", ".halite-notes", "conf", "conf.bak"]
        );
    }

    #[test]
    fn open_file_refuses_a_link_and_reads_nothing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "root only").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("conf")).unwrap();
        let opened = Dir::open(dir.path()).unwrap();
        assert!(matches!(opened.open_file(OsStr::new("conf")), Err(FsError::Link { .. })));
        assert!(matches!(opened.open_dir(OsStr::new("conf")), Err(FsError::Link { .. })));
        assert!(opened.open_file(OsStr::new("missing")).unwrap().is_none());
        assert!(matches!(opened.open_file(OsStr::new(".")), Err(FsError::WrongType { .. })));
    }

    #[test]
    fn links_on_the_way_are_followed_only_when_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let holder = dir.path().join("holder");
        std::fs::create_dir(&holder).unwrap();
        std::os::unix::fs::symlink(&real, holder.join("via")).unwrap();
        std::os::unix::fs::symlink("../real", holder.join("relative")).unwrap();
        // Only we can write `holder`: its links are followed.
        chmod(&holder, 0o755);
        for link in ["via", "relative"] {
            let opened = Dir::open(&holder.join(link)).unwrap();
            assert!(opened.stat().unwrap().same_file(&Dir::open(&real).unwrap().stat().unwrap()), "{link}");
        }
        // Anyone may write it: a link there could be anyone's.
        chmod(&holder, 0o777);
        assert!(matches!(Dir::open(&holder.join("via")), Err(FsError::UntrustedLink { .. })));
        // Sticky: others cannot replace our link.
        chmod(&holder, 0o1777);
        assert!(Dir::open(&holder.join("via")).is_ok());
        chmod(&holder, 0o755);
    }

    #[test]
    fn remove_never_follows_links_inside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        let (parent, name) = open_parent(&tree, None).unwrap();
        parent.remove(&name).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn an_edit_reads_through_one_descriptor_and_writes_only_what_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        std::fs::write(&path, "a\n").unwrap();
        chmod(&path, 0o640);
        let edit = Editable::read(&path, 1024).unwrap();
        assert_eq!(edit.content(), Some(&b"a\n"[..]));
        edit.replace(b"a\nb\n", Perms::mode(0o600), false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640, "mode kept");
        // Changed since it was read: nothing written.
        let edit = Editable::read(&path, 1024).unwrap();
        std::fs::write(&path, "other\n").unwrap();
        assert!(matches!(edit.replace(b"x", Perms::mode(0o644), false), Err(FsError::Changed { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"other\n");
        // A new file, in a directory made for it.
        let new = dir.path().join("d/new");
        let edit = Editable::read(&new, 1024).unwrap();
        assert_eq!(edit.content(), None);
        edit.replace(b"n", Perms::mode(0o600), true).unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().permissions().mode() & 0o7777, 0o600);
    }

    #[test]
    fn an_edit_refuses_links_hard_links_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "root only").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("link")).unwrap();
        std::fs::hard_link(dir.path().join("secret"), dir.path().join("hard")).unwrap();
        assert!(matches!(Editable::read(&dir.path().join("link"), 1024), Err(FsError::Link { .. })));
        assert!(matches!(Editable::read(&dir.path().join("hard"), 1024), Err(FsError::HardLinked { links: 2, .. })));
        std::fs::write(dir.path().join("big"), "0123456789").unwrap();
        assert!(matches!(Editable::read(&dir.path().join("big"), 9), Err(FsError::TooLarge { .. })));
        assert!(Editable::read(&dir.path().join("big"), 10).is_ok());
    }

    #[test]
    fn an_in_place_write_never_follows_a_link_nor_creates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("value"), "60\n").unwrap();
        std::fs::write(dir.path().join("secret"), "root only").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("link")).unwrap();
        let opened = Dir::open(dir.path()).unwrap();
        opened.write_in_place(OsStr::new("value"), b"10\n").unwrap();
        assert_eq!(std::fs::read(dir.path().join("value")).unwrap(), b"10\n");
        assert!(matches!(opened.write_in_place(OsStr::new("link"), b"x"), Err(FsError::Link { .. })));
        assert_eq!(std::fs::read(dir.path().join("secret")).unwrap(), b"root only");
        assert!(opened.write_in_place(OsStr::new("missing"), b"x").unwrap_err().is_not_found());
    }

    #[test]
    fn create_all_makes_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        Dir::create_all(&deep, 0o755).unwrap();
        assert!(deep.is_dir());
        assert!(Dir::open(&dir.path().join("missing")).unwrap_err().is_not_found());
    }
}
