//! # diffusion-alloc
//!
//! The global allocator of diffusion-rs's binaries and benchmarks: mimalloc, told to keep the
//! memory it frees.
//!
//! burn's CPU backend allocates a fresh buffer for every op output. glibc's malloc returns large
//! buffers to the OS, and mimalloc by default purges freed memory after a delay; either way the
//! next step faults the pages in again and the kernel zeroes them (with transparent huge pages,
//! 2 MiB at a time) — 13–27 % of a train step in `perf` before this. [`keep_freed_memory`]
//! turns purging off, so a step reuses the previous step's pages (measured in
//! `docs/performance.md`: `cifar10_iddpm` train step 4.2–4.4 s → 3.5–3.8 s, peak memory
//! +60 MB).
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;
//!
//! fn main() {
//!     diffusion_alloc::keep_freed_memory();
//! }
//! ```

/// The allocator to declare as `#[global_allocator]` (mimalloc's).
pub use mimalloc::MiMalloc as Allocator;

/// Index of `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (include/mimalloc.h of the
/// mimalloc bundled with libmimalloc-sys 0.1.49; the sys crate names the options around it —
/// `mi_option_use_numa_nodes` = 16 — but not this one).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS (`purge_delay = −1`), unless the
/// environment already sets `MIMALLOC_PURGE_DELAY` (which then wins). Returns the delay in
/// effect afterwards, in milliseconds (−1: never).
// `c_long` is i64 here but i32 on Windows, hence the conversion.
#[allow(unsafe_code, clippy::useless_conversion)]
pub fn keep_freed_memory() -> i64 {
    // SAFETY: `mi_option_get` and `mi_option_set` read and store one integer in mimalloc's
    // option table; any option index below `_mi_option_last` is valid, and 15 is.
    unsafe {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
        i64::from(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY))
    }
}

#[cfg(test)]
mod tests {
    /// The option index names the purge delay: its value is mimalloc's default (or the
    /// environment's) before, and −1 after.
    #[test]
    fn purge_delay_is_switched_off() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: as in `keep_freed_memory`.
        #[allow(unsafe_code)]
        let before = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // mimalloc v3's default purge delay (src/options.c) is 1000 ms.
        assert_eq!(before, 1000, "index 15 should be purge_delay (default 1000 ms)");
        assert_eq!(super::keep_freed_memory(), -1);
    }
}
