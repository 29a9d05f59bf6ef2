//! Facts about the machine qexp runs on, for refusing work that cannot fit before it
//! starts.

/// The machine's memory in bytes (Linux's MemTotal), when it can be read.
pub fn total_memory() -> Option<u64> {
    proc_bytes("/proc/meminfo", "MemTotal:")
}

/// This process's resident memory in bytes (Linux's VmRSS), when it can be read.
pub fn resident_memory() -> Option<u64> {
    proc_bytes("/proc/self/status", "VmRSS:")
}

/// The `field` line of a Linux `/proc` file, given in kB, in bytes.
fn proc_bytes(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
