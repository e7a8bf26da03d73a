//! The C allocator's settings for the agent. glibc keeps freed memory in one arena per thread that
//! ever contended (up to 8 per core); with inference, decode and web threads coming and going, that
//! let the resident size grow by ~60 MB over the first seconds of running for no use. One arena, and
//! handing back what model loading freed, keep it near what is in use.

/// Call first thing in `main`, before other threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// One arena: the agent's threads allocate little at a time (a frame, a tensor), so they rarely wait
/// on each other for it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 1;

/// Returns memory freed while loading models to the system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}
