//! The C allocator's settings for a long-running agent.

/// Allocations of 128 KiB and more always get their own mapping, returned to the kernel when
/// freed. glibc otherwise raises that threshold each time such a mapping is freed (up to
/// 32 MiB), after which a full sync's large temporary vectors (a list's page, the writes of a
/// chunk, a layout's sorted backends) come from the heap, where the agent's long-lived small
/// objects pin them: about 4 MiB more peak RSS at 10,000 Services (measured with the bench).
/// Whether it was set (it always is with glibc; elsewhere there is nothing to set).
pub fn return_large_allocations() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: `mallopt` takes a parameter number and a value and only changes the
        // allocator's thresholds; it is called before the agent starts its threads.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// One heap for every thread. The run loop's thread and the tokio worker that reads the watches
/// would otherwise each get a glibc arena, and what the initial list leaves freed in the
/// worker's (its decoded objects) could not be reused by the sync on the main thread: about
/// 25 MiB more peak RSS at 10,000 Services × 10 endpoints (measured with the bench). The agent's
/// threads do not allocate concurrently enough for one arena's lock to matter, except the file
/// source's two parsing threads: with one arena its full sync of 10,000 × 10 took 3.2 s against
/// 1.3 s, for the same peak RSS (bench, alternated), so it is set for the Kubernetes source only.
/// Whether it was set (it always is with glibc; elsewhere there is nothing to set).
pub fn one_arena() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: as above: only a setting of the allocator, before the agent starts its threads.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}
