//! Filesystem facts the kernel keeps: whether a directory is on a bpf filesystem, whether a file
//! is a namespace (nsfs).
use std::path::Path;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether `dir` is on a bpf filesystem (`statfs`'s magic).
pub fn is_bpffs(dir: &Path) -> std::io::Result<bool> {
    Ok(magic(dir)? == BPF_FS_MAGIC)
}

/// Whether `path` is a namespace file (`/proc/PID/ns/*`, or a bind mount of one).
pub fn is_namespace(path: &Path) -> std::io::Result<bool> {
    Ok(magic(path)? == NSFS_MAGIC)
}

/// `statfs`'s filesystem type of `path`.
fn magic(dir: &Path) -> std::io::Result<i64> {
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // Safety: an all-zero statfs is valid; `statfs` writes into it through a valid C string path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // Safety: as above; `st` is exclusively borrowed for the call.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_files_are_told_from_other_files() {
        assert!(is_namespace(Path::new("/proc/self/ns/net")).expect("statfs"));
        assert!(!is_namespace(Path::new("/proc/self/status")).expect("statfs"));
        assert!(is_namespace(Path::new("/nonexistent/netns")).is_err());
    }
}
