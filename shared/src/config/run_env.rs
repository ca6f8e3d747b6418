//! The settings file of a stack that `scripts/up` started (`data/run/env`), read by the
//! command-line tools (`exai-worker`, `exai-call`) so that a second shell reaches the same stack
//! with nothing exported.
//!
//! `scripts/up` writes there, one `KEY='value'` line each, how to reach its stack (the daemon's
//! URL, Redis, Postgres, the key prefix, the staging directory) and what it generated (the
//! tokens, the emulator's URL and key), mode 0600, and removes the file when it stops. A tool
//! finds the file with [`find`] and loads it with [`load`] *before* it reads its configuration:
//! a variable already set in the environment wins, and the file wins over `.env` (it says what
//! runs now; `.env` may have been edited since).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// The variable that names the settings file: a path, or empty for none. Unset: the first
/// [`RUN_ENV_PATH`] found in the current directory or one of its parents.
pub const RUN_ENV_VAR: &str = "EXAI_RUN_ENV";

/// Where `scripts/up` writes its settings, relative to the repository (with the default
/// `EXAI_UP_DIR`).
pub const RUN_ENV_PATH: &str = "data/run/env";

/// A settings file that was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnv {
    /// The file.
    pub path: PathBuf,
    /// The variables it set (those already in the environment were left alone).
    pub set: Vec<String>,
    /// The file's permission bits when others than its owner may read it (the file holds
    /// tokens), else `None`.
    pub readable_by_others: Option<u32>,
}

impl RunEnv {
    /// The one-line warning for a file others may read, if it is one.
    pub fn warning(&self) -> Option<String> {
        self.readable_by_others.map(|mode| {
            format!(
                "warning: {} is readable by other users (mode {mode:04o}) and holds tokens: chmod 600 {}",
                self.path.display(),
                self.path.display()
            )
        })
    }
}

/// The settings file to read: `explicit` (the value of [`RUN_ENV_VAR`]) when given — none when
/// it is empty — else the first `data/run/env` in `cwd` or one of its parents.
pub fn find(explicit: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    match explicit {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => cwd
            .ancestors()
            .map(|dir| dir.join(RUN_ENV_PATH))
            .find(|path| path.is_file()),
    }
}

/// Finds the settings file (see [`find`]) from this process's environment and current
/// directory, and loads it into the environment without overriding a variable that is set.
/// `Ok(None)`: there is none. An error when [`RUN_ENV_VAR`] names a file that cannot be read, or
/// when the file is malformed.
pub fn load() -> Result<Option<RunEnv>, ConfigError> {
    let explicit = std::env::var_os(RUN_ENV_VAR);
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let Some(path) = find(explicit.as_deref(), &cwd) else {
        return Ok(None);
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        ConfigError::new(RUN_ENV_VAR, format!("cannot read {}: {e}", path.display()))
    })?;
    let pairs =
        super::read_dotenv_file(&path).map_err(|e| ConfigError::new(RUN_ENV_VAR, e.message))?;
    let set = pairs
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| std::env::var_os(name).is_none())
        .collect();
    // dotenvy sets only what is not set already: the environment wins.
    dotenvy::from_path(&path)
        .map_err(|e| ConfigError::new(RUN_ENV_VAR, format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    Ok(Some(RunEnv {
        path,
        set,
        readable_by_others: (mode & 0o077 != 0).then_some(mode),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_path_wins_and_an_empty_one_means_none() {
        let cwd = Path::new("/nonexistent/a/b");
        assert_eq!(
            find(Some(OsStr::new("/x/env")), cwd),
            Some(PathBuf::from("/x/env"))
        );
        assert_eq!(find(Some(OsStr::new("")), cwd), None);
        assert_eq!(find(None, cwd), None);
    }

    #[test]
    fn the_file_is_found_in_the_directory_or_a_parent() {
        let root = std::env::temp_dir().join(format!("exai-run-env-{}", std::process::id()));
        let deep = root.join("x/y");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir_all(root.join("data/run")).unwrap();
        std::fs::write(root.join(RUN_ENV_PATH), "A='1'\n").unwrap();
        assert_eq!(find(None, &deep), Some(root.join(RUN_ENV_PATH)));
        assert_eq!(find(None, &root), Some(root.join(RUN_ENV_PATH)));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
