//! Output folders: where qexp may write, and how it replaces what is there.
//!
//! Three rules keep a user's files safe from an experiment someone else wrote:
//! - **Only inside the project.** Every output path resolves (symlinks followed) inside
//!   the project (the experiment's project root, which commands that read an experiment
//!   move into; for `export`, the folder it runs in), unless the user passes
//!   `--allow-outside-project`; the
//!   project folder itself and its ancestors are never outputs.
//! - **Only what qexp made.** A folder is replaced only when it is empty or holds the
//!   marker file qexp writes into every output folder, naming the same kind (model, SAE,
//!   report, checkpoints). Anything else is refused before any work starts.
//! - **Never an empty name.** A new folder is built beside the target under a hidden
//!   staging name and swapped in with one atomic exchange (`renameat2(RENAME_EXCHANGE)`
//!   on Linux), so a kill at any moment leaves either the old folder or the new one at
//!   the target. Staging folders left by killed runs are removed by the next run that
//!   writes the same target.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// The file qexp writes into every folder it makes, naming what the folder is.
pub const MARKER_FILE: &str = ".qexp-output";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    Sae,
    Report,
    Checkpoints,
    /// A sharded run's partial results, waiting for `qexp merge`.
    Shards,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Sae => "sae",
            Kind::Report => "report",
            Kind::Checkpoints => "checkpoints",
            Kind::Shards => "shards",
        }
    }

    pub(crate) fn marker_text(self) -> String {
        format!("qexp output folder\nkind = {}\n", self.name())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Model => "model folder",
            Kind::Sae => "SAE folder",
            Kind::Report => "report folder",
            Kind::Checkpoints => "checkpoint folder",
            Kind::Shards => "shard folder",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("refusing to write {}: it resolves to {}, outside the project ({}); choose a path inside it, or pass --allow-outside-project", path.display(), resolved.display(), project.display())]
    Outside {
        path: PathBuf,
        resolved: PathBuf,
        project: PathBuf,
    },
    #[error("refusing to write {}: it is the project folder or one of its parents", path.display())]
    Project { path: PathBuf },
    #[error("refusing to replace {}: it is not a {kind} qexp made (no {MARKER_FILE} naming one); choose another path, or move it away yourself", path.display())]
    NotOurs { path: PathBuf, kind: Kind },
    #[error("refusing to write {}: it exists and is not a folder", path.display())]
    NotAFolder { path: PathBuf },
    #[error("refusing to replace {}: it is not a file qexp wrote (it does not start with `{header}`); move it away, or rename the experiment", path.display())]
    NotOurFile { path: PathBuf, header: String },
    #[error("cannot inspect {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where outputs may go: inside `project` (canonical), or anywhere when allowed.
#[derive(Debug, Clone)]
pub struct Scope {
    pub project: PathBuf,
    pub allow_outside: bool,
}

impl Scope {
    /// The current folder as the project.
    pub fn current(allow_outside: bool) -> std::io::Result<Self> {
        Ok(Scope {
            project: std::env::current_dir()?.canonicalize()?,
            allow_outside,
        })
    }

    /// `project` (which must exist) as the project.
    pub fn within(project: &Path, allow_outside: bool) -> std::io::Result<Self> {
        Ok(Scope {
            project: project.canonicalize()?,
            allow_outside,
        })
    }

    /// Checks that the single file `target` may be (re)written: inside the project (unless
    /// allowed), and, if it exists, a regular file starting with `header` (one qexp wrote).
    pub fn check_file(&self, target: &Path, header: &str) -> Result<(), OutputError> {
        let resolved = resolve(&self.project.join(target)).map_err(io_error(target))?;
        if !self.allow_outside && !resolved.starts_with(&self.project) {
            return Err(OutputError::Outside {
                path: target.to_owned(),
                resolved,
                project: self.project.clone(),
            });
        }
        let ours = match std::fs::symlink_metadata(&resolved) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_error(target)(e)),
            Ok(meta) => {
                meta.is_file()
                    && std::fs::read_to_string(&resolved).is_ok_and(|t| t.starts_with(header))
            }
        };
        if ours {
            Ok(())
        } else {
            Err(OutputError::NotOurFile {
                path: target.to_owned(),
                header: header.to_owned(),
            })
        }
    }

    /// Checks, without writing anything, that `target` may be (re)written as a `kind`
    /// folder. Relative paths are taken from the project folder.
    pub fn check(&self, target: &Path, kind: Kind) -> Result<(), OutputError> {
        let resolved = resolve(&self.project.join(target)).map_err(io_error(target))?;
        if self.project.starts_with(&resolved) {
            return Err(OutputError::Project {
                path: target.to_owned(),
            });
        }
        if !self.allow_outside && !resolved.starts_with(&self.project) {
            return Err(OutputError::Outside {
                path: target.to_owned(),
                resolved,
                project: self.project.clone(),
            });
        }
        replaceable(&resolved, kind).map_err(|e| match e {
            OutputError::NotOurs { kind, .. } => OutputError::NotOurs {
                path: target.to_owned(),
                kind,
            },
            OutputError::NotAFolder { .. } => OutputError::NotAFolder {
                path: target.to_owned(),
            },
            other => other,
        })
    }
}

/// `path` (absolute) with every symlink of its existing part resolved and `.`/`..`
/// applied; the part that does not exist yet is taken as written.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut links_left = MAX_LINKS_FOLLOWED;
    resolve_following(path, &mut links_left)
}

/// Links followed through dangling links before giving up, as the kernel's own limit:
/// a link to itself must end in an error, not in endless recursion.
const MAX_LINKS_FOLLOWED: usize = 40;

fn resolve_following(path: &Path, links_left: &mut usize) -> std::io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Prefix(_) | Component::RootDir => resolved.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                resolved.push(name);
                match std::fs::symlink_metadata(&resolved) {
                    Ok(meta) if meta.file_type().is_symlink() => match resolved.canonicalize() {
                        Ok(target) => resolved = target,
                        // A dangling link: writing through it would land wherever it
                        // points, which we cannot see; treat the link's text as the path.
                        Err(_) => {
                            if *links_left == 0 {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::InvalidInput,
                                    "too many levels of symbolic links",
                                ));
                            }
                            *links_left -= 1;
                            let link = std::fs::read_link(&resolved)?;
                            resolved.pop();
                            resolved = resolve_following(&resolved.join(link), links_left)?;
                        }
                    },
                    _ => {}
                }
            }
        }
    }
    Ok(resolved)
}

/// Whether a `kind` folder may replace what is at `target`: nothing, an empty folder,
/// or a folder whose marker names `kind`.
fn replaceable(target: &Path, kind: Kind) -> Result<(), OutputError> {
    let meta = match std::fs::symlink_metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(target)(e)),
    };
    if !meta.is_dir() {
        return Err(OutputError::NotAFolder {
            path: target.to_owned(),
        });
    }
    if marked_as(target, kind) || (kind == Kind::Sae && saved_by_older_qexp(target)) {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(target).map_err(io_error(target))?;
    if entries.next().is_none() {
        return Ok(());
    }
    Err(OutputError::NotOurs {
        path: target.to_owned(),
        kind,
    })
}

/// Whether `dir` holds qexp's marker for `kind`.
pub fn marked_as(dir: &Path, kind: Kind) -> bool {
    std::fs::read_to_string(dir.join(MARKER_FILE)).is_ok_and(|text| text == kind.marker_text())
}

/// An SAE folder from a qexp that wrote no marker: its cfg.json says qexp trained it.
fn saved_by_older_qexp(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cfg.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|cfg| {
            cfg["metadata"]["trained_with"]
                .as_str()
                .map(|by| by.starts_with("qexp "))
        })
        .unwrap_or(false)
}

/// Writes the marker of `kind` into `dir`, making it a folder qexp may replace later.
pub fn mark(dir: &Path, kind: Kind) -> std::io::Result<()> {
    std::fs::write(dir.join(MARKER_FILE), kind.marker_text())
}

/// A folder being built beside its target; removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    kind: Kind,
    committed: bool,
}

const STAGING_TAG: &str = ".qexp-staging.";

impl Staging {
    /// Makes a fresh staging folder for `target` (marked as `kind`, with the permissions
    /// the user's umask gives a new folder), after removing what killed runs left.
    pub fn new(target: &Path, kind: Kind) -> std::io::Result<Self> {
        let (parent, name) = parent_and_name(target)?;
        std::fs::create_dir_all(&parent)?;
        remove_leftovers(&parent, &name);
        let prefix = format!(".{name}{STAGING_TAG}{}.", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&parent)?
            .keep();
        set_default_permissions(&dir, true)?;
        mark(&dir, kind)?;
        Ok(Staging {
            dir,
            target: target.to_owned(),
            kind,
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Puts the finished folder at the target in one atomic step, then removes the old one.
    /// Refuses (and keeps the target) if what is there now is not a `kind` folder.
    pub fn commit(mut self) -> Result<(), OutputError> {
        replaceable(&self.target, self.kind)?;
        let target_exists = std::fs::symlink_metadata(&self.target).is_ok();
        if target_exists {
            exchange(&self.dir, &self.target).map_err(io_error(&self.target))?;
            // The staging name now holds the old folder.
            std::fs::remove_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        } else {
            std::fs::rename(&self.dir, &self.target).map_err(io_error(&self.target))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn parent_and_name(target: &Path) -> std::io::Result<(PathBuf, String)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} does not name a folder", target.display()),
            )
        })?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Removes staging folders for `name` in `parent` whose process is gone (a run that was
/// killed while it wrote, or before it removed the old folder it swapped out).
fn remove_leftovers(parent: &Path, name: &str) {
    let prefix = format!(".{name}{STAGING_TAG}");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        rustix::process::Pid::from_raw(pid as i32)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Swaps two existing paths atomically.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(std::io::Error::from)
}

/// Without an atomic exchange: move the old folder to the staging name through a third
/// name, so a kill leaves it findable beside the target.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn exchange(staging: &Path, target: &Path) -> std::io::Result<()> {
    let swap = staging.with_extension("swap");
    std::fs::rename(target, &swap)?;
    std::fs::rename(staging, target)?;
    std::fs::rename(&swap, staging)
}

/// The permission bits this process's umask gives a new folder (or file).
pub fn set_default_permissions(path: &Path, is_dir: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let base = if is_dir { 0o777 } else { 0o666 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(base & !umask()))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, is_dir);
        Ok(())
    }
}

/// Moves a finished file (synced first) to `path` in one rename, with the permissions
/// a new file gets (a temporary file is made readable by its owner only): readers see
/// the old file or the whole new one.
pub fn put_in_place(staged: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    staged.as_file().sync_all()?;
    staged.persist(path).map_err(|e| e.error)?;
    set_default_permissions(path, false)
}

/// The process's umask, read without changing it (Linux reports it in /proc); elsewhere
/// the common default.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(dir: &Path) -> Scope {
        Scope {
            project: dir.canonicalize().unwrap(),
            allow_outside: false,
        }
    }

    #[test]
    fn only_empty_or_marked_folders_of_the_same_kind_are_replaceable() {
        let dir = tempfile::tempdir().unwrap();
        let scope = scope(dir.path());
        assert!(scope.check(Path::new("new"), Kind::Sae).is_ok());
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        assert!(scope.check(Path::new("empty"), Kind::Sae).is_ok());
        std::fs::create_dir(dir.path().join("mine")).unwrap();
        std::fs::write(dir.path().join("mine/notes.txt"), "keep").unwrap();
        assert!(matches!(
            scope.check(Path::new("mine"), Kind::Sae),
            Err(OutputError::NotOurs { .. })
        ));
        mark(&dir.path().join("mine"), Kind::Report).unwrap();
        assert!(
            scope.check(Path::new("mine"), Kind::Sae).is_err(),
            "wrong kind"
        );
        assert!(scope.check(Path::new("mine"), Kind::Report).is_ok());
    }

    #[test]
    fn paths_resolve_inside_the_project_or_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        std::fs::create_dir(&project).unwrap();
        let scope = scope(&project);
        for outside in ["../elsewhere", "/tmp/x", "a/../../b"] {
            assert!(
                matches!(
                    scope.check(Path::new(outside), Kind::Sae),
                    Err(OutputError::Outside { .. })
                ),
                "{outside}"
            );
        }
        for project_itself in [".", "", "..", "a/.."] {
            assert!(
                matches!(
                    scope.check(Path::new(project_itself), Kind::Sae),
                    Err(OutputError::Project { .. })
                ),
                "{project_itself}"
            );
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path(), project.join("link")).unwrap();
            assert!(matches!(
                scope.check(Path::new("link/x"), Kind::Sae),
                Err(OutputError::Outside { .. })
            ));
            std::os::unix::fs::symlink("../../nowhere", project.join("dangling")).unwrap();
            assert!(matches!(
                scope.check(Path::new("dangling/x"), Kind::Sae),
                Err(OutputError::Outside { .. })
            ));
            // Links in a loop are an error, not endless recursion.
            std::os::unix::fs::symlink("loop", project.join("loop")).unwrap();
            std::os::unix::fs::symlink("pong", project.join("ping")).unwrap();
            std::os::unix::fs::symlink("ping", project.join("pong")).unwrap();
            for looped in ["loop/x", "ping/x"] {
                assert!(
                    matches!(
                        scope.check(Path::new(looped), Kind::Sae),
                        Err(OutputError::Io { .. })
                    ),
                    "{looped}"
                );
            }
        }
        let allowed = Scope {
            allow_outside: true,
            ..scope
        };
        assert!(allowed.check(Path::new("../elsewhere"), Kind::Sae).is_ok());
        assert!(allowed.check(Path::new(".."), Kind::Sae).is_err());
    }

    #[test]
    fn commit_swaps_the_new_folder_in_and_leaves_no_staging() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        for round in 0..2 {
            let staging = Staging::new(&target, Kind::Report).unwrap();
            std::fs::write(staging.path().join("n"), round.to_string()).unwrap();
            staging.commit().unwrap();
            assert_eq!(
                std::fs::read_to_string(target.join("n")).unwrap(),
                round.to_string()
            );
            assert!(marked_as(&target, Kind::Report));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn staging_left_by_a_dead_process_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        // No process has this id (above Linux's pid_max).
        let leftover = dir.path().join(format!(".out{STAGING_TAG}99999999.abc"));
        std::fs::create_dir(&leftover).unwrap();
        let staging = Staging::new(&dir.path().join("out"), Kind::Report).unwrap();
        assert!(!leftover.exists());
        drop(staging);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
