//! Opening input files without hanging: a FIFO or a device named where a file is
//! expected would block `open` or never end a read, so inputs must be regular files.

use std::path::Path;

/// An error unless `path` is a regular file (following symlinks). Does not open it.
pub fn ensure_regular(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

/// Opens a regular file for reading.
pub fn open(path: &Path) -> std::io::Result<std::fs::File> {
    ensure_regular(path)?;
    std::fs::File::open(path)
}

/// A regular file's text.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    ensure_regular(path)?;
    std::fs::read_to_string(path)
}

/// A regular file's bytes.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    ensure_regular(path)?;
    std::fs::read(path)
}

#[cfg(all(test, unix))]
mod tests {
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let error = super::read_to_string(&fifo).unwrap_err();
        assert_eq!(error.to_string(), "not a regular file");
    }
}
