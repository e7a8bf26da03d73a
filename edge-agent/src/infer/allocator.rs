//! The C allocator's settings for the agent, in one place: few arenas, frames in their own
//! mappings (`run`), and what model loading freed handed back, so the resident size stays near
//! what is in use (glibc's defaults let it grow ~60 MB in the first seconds, and creep for hours).

/// Call first thing in `main`, before other threads start; `run` then allows two arenas
/// ([`keep_frame_memory_returnable`]).
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

/// For `run`, before its runtime starts any thread: frames (a megabyte or more each) are allocated
/// and freed on many threads, and glibc's default lets each thread's arena keep freed frame-sized
/// blocks, so the agent's memory crept up for hours. Blocks of 256 KB and more get their own
/// mappings (returned on free), and two arenas instead of one keep the frame threads from waiting
/// on each other; its memory stays flat (tests/camera_sources.rs). The price is a fresh mapping,
/// with its page faults, for every frame (bench/RESULTS.md).
pub fn keep_frame_memory_returnable() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns memory freed while loading models to the system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}
