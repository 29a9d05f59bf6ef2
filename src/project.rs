//! The project an experiment belongs to: the folder its paths (model, datasets, SAEs,
//! `save =`, reports) resolve against, found from the experiment file itself so that a
//! run gives the same result from whichever folder it is started.

use std::path::{Path, PathBuf};

/// A file whose presence marks a folder as a qexp project root (for projects that are
/// not git repositories, or that live in a subfolder of one).
pub const MARKER: &str = "qexp.toml";

/// Why a folder is the project root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// It holds [`MARKER`].
    Marker,
    /// It holds `.git` (the top of a git work tree).
    Git,
    /// No folder above the experiment holds either: the current folder, as given.
    CurrentFolder,
}

#[derive(Debug, Clone)]
pub struct Project {
    /// Canonical.
    pub root: PathBuf,
    pub found: Found,
}

impl Project {
    /// The nearest folder above `experiment` (a file that exists) holding [`MARKER`] or
    /// `.git`; else `current` (the folder the command was started in). The marker wins
    /// over `.git` in the same folder; the nearest folder wins over both.
    pub fn of(experiment: &Path, current: &Path) -> std::io::Result<Project> {
        let file = current.join(experiment).canonicalize()?;
        for folder in file.ancestors().skip(1) {
            if folder.join(MARKER).is_file() {
                return Ok(Project::at(folder, Found::Marker));
            }
            if folder.join(".git").exists() {
                return Ok(Project::at(folder, Found::Git));
            }
        }
        Ok(Project::at(&current.canonicalize()?, Found::CurrentFolder))
    }

    fn at(root: &Path, found: Found) -> Project {
        Project {
            root: root.to_path_buf(),
            found,
        }
    }

    /// `path` as given on the command line in `current`, written relative to the root
    /// where it lies inside it (so messages and lock files name it the same way from
    /// any folder), else absolute.
    pub fn relative(&self, current: &Path, path: &Path) -> PathBuf {
        let absolute = current.join(path);
        let absolute = absolute.canonicalize().unwrap_or(absolute);
        match absolute.strip_prefix(&self.root) {
            Ok(inside) if !inside.as_os_str().is_empty() => inside.to_path_buf(),
            Ok(_) => PathBuf::from("."),
            Err(_) => absolute,
        }
    }

    /// One line saying which folder paths resolve against and why, for a user who
    /// started the command elsewhere.
    pub fn describe(&self) -> String {
        let why = match self.found {
            Found::Marker => format!("it holds {MARKER}"),
            Found::Git => "it holds .git".to_owned(),
            Found::CurrentFolder => format!(
                "no folder above the experiment holds {MARKER} or .git, so the current folder"
            ),
        };
        format!(
            "the experiment's paths resolve against {} ({why})",
            self.root.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
    }

    #[test]
    fn the_nearest_marked_folder_above_the_experiment_is_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(top.join(".git")).unwrap();
        touch(&top.join("sub/qexp.toml"));
        touch(&top.join("sub/experiments/a.qexp"));
        touch(&top.join("other/b.qexp"));
        let elsewhere = tempfile::tempdir().unwrap();

        let sub = Project::of(&top.join("sub/experiments/a.qexp"), elsewhere.path()).unwrap();
        assert_eq!(
            (sub.root.as_path(), sub.found),
            (&*top.join("sub"), Found::Marker)
        );
        let git = Project::of(Path::new("other/b.qexp"), &top).unwrap();
        assert_eq!((git.root.as_path(), git.found), (&*top, Found::Git));
        assert_eq!(
            git.relative(&top.join("other"), Path::new("b.qexp")),
            PathBuf::from("other/b.qexp")
        );
    }

    #[test]
    fn without_a_marker_the_current_folder_is_the_root() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("x/e.qexp"));
        let project = Project::of(Path::new("x/e.qexp"), dir.path()).unwrap();
        // A temporary folder may itself lie in a git work tree; only check the fallback
        // where it does not.
        if project.found == Found::CurrentFolder {
            assert_eq!(project.root, dir.path().canonicalize().unwrap());
        }
        assert!(Project::of(Path::new("x/missing.qexp"), dir.path()).is_err());
    }
}
