//! Writing output folders atomically: build under a temporary name beside the target,
//! then swap it in, so a failure never leaves a half-written folder where a good one was.

use std::path::{Path, PathBuf};

/// A fresh staging folder beside `target` (removed on drop unless kept).
pub fn staging_dir_for(target: &Path) -> std::io::Result<tempfile::TempDir> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    tempfile::Builder::new()
        .prefix(".qexp-staging-")
        .tempdir_in(parent)
}

/// Moves the finished `staging` folder to `target`, replacing what was there only now.
pub fn replace_dir(staging: tempfile::TempDir, target: &Path) -> std::io::Result<()> {
    let staging = staging.keep();
    if target.exists() {
        let old = target.with_file_name(format!(
            ".{}.old-{}",
            target
                .file_name()
                .map_or_else(Default::default, |n| n.to_string_lossy()),
            std::process::id()
        ));
        std::fs::rename(target, &old)?;
        std::fs::rename(&staging, target)?;
        std::fs::remove_dir_all(old)
    } else {
        std::fs::rename(&staging, target)
    }
}
