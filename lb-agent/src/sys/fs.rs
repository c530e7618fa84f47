//! Filesystem facts the kernel keeps: whether a directory is on a bpf filesystem.
use std::path::Path;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `dir` is on a bpf filesystem (`statfs`'s magic).
pub fn is_bpffs(dir: &Path) -> std::io::Result<bool> {
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // Safety: an all-zero statfs is valid; `statfs` writes into it through a valid C string path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // Safety: as above; `st` is exclusively borrowed for the call.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}
