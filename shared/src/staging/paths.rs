//! The upload-path gate: a path is uploaded only if it is absolute, lies beneath one of
//! `EXAI_UPLOAD_ROOTS` with no `..` and no symbolic link at any component beneath the root,
//! names a regular file and has a size between 1 byte and the limit.
//!
//! # Open once
//! The file is opened once, and everything after that works on the open descriptor: its type
//! and size come from `fstat` on it, and the staging copy reads it (the Moonshot upload then
//! reads the staged blob). Nothing opens the path by name again, so a file swapped for a
//! symlink between the check and the read cannot slip outside the roots.
//!
//! The open starts from a descriptor on the root (the root itself, as the operator configured
//! it, may be or pass through a symlink) and refuses a symlink at every component beneath it:
//! `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it (Linux 5.6 and
//! later), else a walk from the root, one component at a time, each opened with `O_NOFOLLOW`.
//! The final open uses `O_NONBLOCK` so that a FIFO cannot stall it; a FIFO, device, socket or
//! directory is then refused by its `fstat`.
//!
//! # What a client learns
//! Whether a path lies beneath a root is decided from the path as given, before the file system
//! is asked anything, so a path outside the roots gets the same answer whether or not it exists.
//! Beneath a root, a missing file may say so.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::StagingError;

/// An upload path accepted and opened.
#[derive(Debug)]
pub struct OpenedUpload {
    /// The open file: the only thing to read.
    pub file: File,
    /// The file name to upload it as: the last component of the path as given.
    pub filename: String,
    /// Its size, from `fstat` on [`file`](Self::file).
    pub size: u64,
}

/// Flags of every directory opened on the way to the file.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Flags of the final open.
fn file_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC
}

/// Checks and opens an upload path (see the [module docs](self)). Blocking (file-system calls);
/// see [`open_upload_path`] for async callers.
pub fn open_upload_path_blocking(
    raw: &str,
    roots: &[PathBuf],
    max_bytes: u64,
) -> Result<OpenedUpload, StagingError> {
    open_with(raw, roots, max_bytes, Opener::Best)
}

/// [`open_upload_path_blocking`] on the blocking pool.
pub async fn open_upload_path(
    raw: &str,
    roots: &[PathBuf],
    max_bytes: u64,
) -> Result<OpenedUpload, StagingError> {
    let raw = raw.to_owned();
    let roots = roots.to_vec();
    tokio::task::spawn_blocking(move || open_upload_path_blocking(&raw, &roots, max_bytes))
        .await
        .map_err(|e| StagingError::io("path validation task", io::Error::other(e)))?
}

/// How the path beneath the root is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opener {
    /// `openat2` where the kernel has it, else the walk.
    Best,
    /// The `O_NOFOLLOW` walk only.
    #[cfg_attr(not(test), allow(dead_code))]
    Walk,
}

fn open_with(
    raw: &str,
    roots: &[PathBuf],
    max_bytes: u64,
    opener: Opener,
) -> Result<OpenedUpload, StagingError> {
    if roots.is_empty() {
        return Err(StagingError::NoRoots);
    }
    let given = Path::new(raw);
    if !given.is_absolute() {
        return Err(StagingError::NotAbsolute {
            path: raw.to_owned(),
        });
    }
    let outside = || StagingError::OutsideRoots {
        path: raw.to_owned(),
    };
    let (root, rest) = beneath_a_root(given, roots).ok_or_else(outside)?;
    let Some(last) = rest.last() else {
        // The root itself.
        return Err(StagingError::NotAFile {
            path: raw.to_owned(),
        });
    };
    let filename = last.to_string_lossy().into_owned();
    let opened = match opener {
        Opener::Best => open_beneath(&root, &rest),
        Opener::Walk => walk_beneath(&root, &rest),
    };
    let fd = opened.map_err(|e| open_error(raw, e))?;
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| StagingError::io(format!("fstat {raw}"), e))?;
    if !meta.is_file() {
        return Err(StagingError::NotAFile {
            path: raw.to_owned(),
        });
    }
    let size = meta.len();
    if size == 0 {
        return Err(StagingError::Empty { name: filename });
    }
    if size > max_bytes {
        return Err(StagingError::TooLarge {
            name: filename,
            size,
            limit: max_bytes,
        });
    }
    Ok(OpenedUpload {
        file,
        filename,
        size,
    })
}

/// The first root the path lies beneath (lexically: the root as configured or resolved is a
/// prefix of the path), opened, with the components beneath it; `None` when there is none, or
/// when a component beneath it is `..`.
fn beneath_a_root<'a>(given: &'a Path, roots: &[PathBuf]) -> Option<(OwnedFd, Vec<&'a OsStr>)> {
    for root in roots {
        let mut spellings = vec![root.clone()];
        if let Ok(resolved) = std::fs::canonicalize(root)
            && resolved != *root
        {
            spellings.push(resolved);
        }
        for spelling in spellings {
            let Ok(rest) = given.strip_prefix(&spelling) else {
                continue;
            };
            let rest: Option<Vec<&OsStr>> = rest
                .components()
                .map(|c| match c {
                    Component::Normal(name) => Some(name),
                    _ => None,
                })
                .collect();
            let rest = rest?;
            // The root is the operator's: symlinks in its own spelling are followed.
            let Ok(fd) = rustix::fs::open(
                &spelling,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            return Some((fd, rest));
        }
    }
    None
}

/// Opens `rest` beneath `root` with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or with
/// the walk when the kernel lacks `openat2`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn open_beneath(root: &OwnedFd, rest: &[&OsStr]) -> Result<OwnedFd, Errno> {
    use rustix::fs::ResolveFlags;
    let relative: PathBuf = rest.iter().collect();
    match rustix::fs::openat2(
        root,
        &relative,
        file_flags(),
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        // No openat2 (before Linux 5.6, or filtered by a seccomp policy).
        Err(Errno::NOSYS) | Err(Errno::PERM) => walk_beneath(root, rest),
        other => other,
    }
}

/// Elsewhere, the walk.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn open_beneath(root: &OwnedFd, rest: &[&OsStr]) -> Result<OwnedFd, Errno> {
    walk_beneath(root, rest)
}

/// Opens `rest` beneath `root` one component at a time, each with `O_NOFOLLOW` relative to the
/// directory opened before it; `rest` holds only plain names (no `..`), so the walk cannot
/// climb out of the root.
fn walk_beneath(root: &OwnedFd, rest: &[&OsStr]) -> Result<OwnedFd, Errno> {
    let Some((last, dirs)) = rest.split_last() else {
        return Err(Errno::ISDIR);
    };
    let mut dir: Option<OwnedFd> = None;
    for name in dirs {
        let parent = dir.as_ref().unwrap_or(root);
        let next = match rustix::fs::openat(parent, *name, dir_flags(), Mode::empty()) {
            // `O_DIRECTORY | O_NOFOLLOW` on a symlink says "not a directory": tell it apart.
            Err(Errno::NOTDIR) if is_symlink(parent, name) => Err(Errno::LOOP),
            other => other,
        }?;
        dir = Some(next);
    }
    let parent = dir.as_ref().unwrap_or(root);
    rustix::fs::openat(parent, *last, file_flags(), Mode::empty())
}

/// Whether `name` in `dir` is a symbolic link (not followed).
fn is_symlink(dir: &OwnedFd, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
    })
}

/// The error for a failed open of `raw` beneath its root.
fn open_error(raw: &str, errno: Errno) -> StagingError {
    let path = raw.to_owned();
    match errno {
        Errno::LOOP => StagingError::Symlink { path },
        Errno::XDEV => StagingError::OutsideRoots { path },
        Errno::NOENT | Errno::NOTDIR | Errno::ACCESS | Errno::PERM | Errno::NAMETOOLONG => {
            StagingError::NotFound {
                path,
                reason: io::Error::from(errno).to_string(),
            }
        }
        Errno::NXIO | Errno::NODEV | Errno::OPNOTSUPP | Errno::ISDIR => {
            StagingError::NotAFile { path }
        }
        other => StagingError::io(format!("open {raw}"), other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("exai-staging-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const OPENERS: [Opener; 2] = [Opener::Best, Opener::Walk];

    fn check(p: &Path, roots: &[PathBuf], opener: Opener) -> Result<OpenedUpload, StagingError> {
        open_with(p.to_str().unwrap(), roots, 8, opener)
    }

    fn read(mut opened: OpenedUpload) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        opened.file.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn plain_files_beneath_a_root_open_and_read() {
        let dir = scratch();
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("sub/deeper/ok.txt"), b"data").unwrap();
        std::fs::write(root.join("top.txt"), b"top").unwrap();
        let roots = vec![root.clone()];
        for opener in OPENERS {
            let ok = check(&root.join("sub/deeper/ok.txt"), &roots, opener).unwrap();
            assert_eq!(ok.size, 4);
            assert_eq!(ok.filename, "ok.txt");
            assert_eq!(read(ok), b"data");
            // `.` components and doubled slashes are no components at all.
            let raw = format!("{}/./sub//deeper/ok.txt", root.display());
            assert_eq!(
                read(open_with(&raw, &roots, 8, opener).unwrap()),
                b"data",
                "{opener:?}"
            );
            assert_eq!(
                read(check(&root.join("top.txt"), &roots, opener).unwrap()),
                b"top"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_root_given_through_a_symlink_is_followed_but_nothing_beneath_it() {
        let dir = scratch();
        let real = dir.join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("f.txt"), b"f").unwrap();
        std::os::unix::fs::symlink(&real, dir.join("alias")).unwrap();
        // The root is configured through the symlink; paths may be given either way.
        let roots = vec![dir.join("alias")];
        for opener in OPENERS {
            assert_eq!(
                read(check(&dir.join("alias/f.txt"), &roots, opener).unwrap()),
                b"f"
            );
            assert_eq!(
                read(check(&real.join("f.txt"), &roots, opener).unwrap()),
                b"f"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn symlinks_dotdot_directories_and_fifos_beneath_a_root_are_refused() {
        let dir = scratch();
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/ok.txt"), b"data").unwrap();
        std::fs::write(dir.join("secret.txt"), b"secret").unwrap();
        let outside_dir = dir.join("elsewhere");
        std::fs::create_dir_all(&outside_dir).unwrap();
        std::fs::write(outside_dir.join("x.txt"), b"x").unwrap();
        // A symlink out of the roots, by an absolute target.
        std::os::unix::fs::symlink(dir.join("secret.txt"), root.join("escape.txt")).unwrap();
        // The same by a relative target.
        std::os::unix::fs::symlink("../secret.txt", root.join("escape-rel.txt")).unwrap();
        // A symlink that stays inside is refused all the same.
        std::os::unix::fs::symlink(root.join("sub/ok.txt"), root.join("inside.txt")).unwrap();
        // A symlink as a directory component, out and in.
        std::os::unix::fs::symlink(&outside_dir, root.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(root.join("sub"), root.join("subalias")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let roots = vec![root.clone()];
        for opener in OPENERS {
            let check = |p: &Path| check(p, &roots, opener);
            for link in ["escape.txt", "escape-rel.txt", "inside.txt"] {
                assert!(
                    matches!(check(&root.join(link)), Err(StagingError::Symlink { .. })),
                    "{link} {opener:?}"
                );
            }
            for via in ["linkdir/x.txt", "subalias/ok.txt"] {
                assert!(
                    matches!(check(&root.join(via)), Err(StagingError::Symlink { .. })),
                    "{via} {opener:?}"
                );
            }
            // `..` is refused, even when it would land back inside.
            for dotdot in ["sub/../../secret.txt", "sub/../sub/ok.txt"] {
                assert!(
                    matches!(
                        check(&root.join(dotdot)),
                        Err(StagingError::OutsideRoots { .. })
                    ),
                    "{dotdot} {opener:?}"
                );
            }
            // A directory, the root itself and a FIFO are not files (and the FIFO does not
            // block the open).
            for not_a_file in [root.join("sub"), root.clone(), root.join("fifo")] {
                assert!(
                    matches!(check(&not_a_file), Err(StagingError::NotAFile { .. })),
                    "{} {opener:?}",
                    not_a_file.display()
                );
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn outside_and_missing_outside_say_the_same() {
        let dir = scratch();
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.join("secret.txt"), b"secret").unwrap();
        std::fs::create_dir_all(dir.join("rootx")).unwrap();
        std::fs::write(dir.join("rootx/f.txt"), b"x").unwrap();
        let roots = vec![root.clone()];
        let message = |p: &Path| {
            let e = open_upload_path_blocking(p.to_str().unwrap(), &roots, 8).unwrap_err();
            assert!(matches!(e, StagingError::OutsideRoots { .. }), "{e}");
            e.to_string().replace(p.to_str().unwrap(), "<path>")
        };
        let existing = message(&dir.join("secret.txt"));
        assert_eq!(existing, message(&dir.join("missing.txt")));
        assert_eq!(existing, message(&dir.join("nowhere/missing.txt")));
        assert_eq!(existing, message(&root.join("../secret.txt")));
        assert_eq!(existing, message(&root.join("../missing.txt")));
        // A sibling whose name merely starts with the root's is outside it.
        assert_eq!(existing, message(&dir.join("rootx/f.txt")));
        // Beneath a root, a missing file may say so.
        assert!(matches!(
            open_upload_path_blocking(root.join("missing.txt").to_str().unwrap(), &roots, 8),
            Err(StagingError::NotFound { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sizes_absolute_paths_and_roots_are_checked() {
        let dir = scratch();
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("empty.txt"), b"").unwrap();
        std::fs::write(root.join("big.txt"), b"0123456789").unwrap();
        std::fs::write(root.join("ok.txt"), b"ok").unwrap();
        let roots = vec![root.clone()];
        assert!(matches!(
            check(&root.join("empty.txt"), &roots, Opener::Best),
            Err(StagingError::Empty { .. })
        ));
        assert!(matches!(
            check(&root.join("big.txt"), &roots, Opener::Best),
            Err(StagingError::TooLarge {
                size: 10,
                limit: 8,
                ..
            })
        ));
        assert!(matches!(
            open_upload_path_blocking("root/ok.txt", &roots, 8),
            Err(StagingError::NotAbsolute { .. })
        ));
        assert!(matches!(
            open_upload_path_blocking(root.join("ok.txt").to_str().unwrap(), &[], 8),
            Err(StagingError::NoRoots)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
