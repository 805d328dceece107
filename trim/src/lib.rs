//! Hands the allocator's free memory back to the kernel.
//!
//! glibc's allocator keeps memory a program frees: a proxy that held 10,000 connections (or
//! parked them, `weft_proxy::http::park`) keeps their buffers' pages resident for good, and
//! reuses them only in part. `malloc_trim(0)` returns every free page, including those in
//! the middle of the heap (`madvise(MADV_DONTNEED)`), in all arenas. It takes each arena's
//! lock while it works, so callers run it on a blocking thread and only after a lot was freed
//! (`weft_proxy::trim`).
//!
//! This crate is the workspace's one `unsafe` call (the workspace forbids unsafe code; see
//! docs/ARCHITECTURE.md). On other C libraries it does nothing.

/// Returns the allocator's free pages to the kernel; `true` if any were (always `false` where
/// the C library is not glibc).
pub fn release_free_memory() -> bool {
    imp::release()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub(super) fn release() -> bool {
        // SAFETY: malloc_trim(3) takes no pointers and touches only the allocator's own
        // state, under its arena locks; it is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn release() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    /// Memory freed by the program goes back: resident memory falls after a large free.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_pages_leave_the_process() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        }
        // Many chunks below the mmap threshold, touched, with a small live one between each
        // pair so the heap cannot shrink from its top alone.
        let mut keep = Vec::new();
        let mut free = Vec::new();
        for _ in 0..8192 {
            let mut v = vec![0u8; 8192];
            v[0] = 1;
            v[4096] = 1;
            free.push(v);
            keep.push(vec![1u8; 64]);
        }
        drop(free);
        let before = rss_kib();
        assert!(super::release_free_memory());
        let after = rss_kib();
        assert!(
            before.saturating_sub(after) > 32 * 1024,
            "RSS {before} KiB before the trim, {after} KiB after"
        );
        drop(keep);
    }
}
