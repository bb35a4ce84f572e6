//! Kernels for burn's CPU backend (`flex`), plain and autodiff (without gradient
//! checkpointing). Each returns `None` where it does not apply, and the caller falls back to
//! burn's composite ops.

use std::cell::RefCell;

use rayon::prelude::*;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::{Autodiff, BackendTypes, Flex};
use burn::tensor::{Tensor, TensorData};

pub mod act;
pub mod attention;
pub mod conv;
pub mod gemm;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod winograd;

pub use norm::fused;

thread_local! {
    /// This thread's reusable scratch buffers (see [`with_scratch`]).
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with three scratch slices of the given lengths, taken from this thread's reusable
/// buffers (grown as needed, never shrunk; contents unspecified: every user writes before it
/// reads). One set serves every kernel (im2col tiles, Winograd's V and M, attention scores).
/// A re-entrant call on the same thread — a rayon worker that steals another chunk of a kernel
/// while it waits inside a parallel GEMM — gets fresh buffers instead of a borrow panic.
pub fn with_scratch<R>(lens: [usize; 3], f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            for (buf, &len) in s.iter_mut().zip(&lens) {
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
            }
            let [a, b, c] = &mut *s;
            f(&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]])
        }
        Err(_) => {
            let [mut a, mut b, mut c] = lens.map(|n| vec![0f32; n]);
            f(&mut a, &mut b, &mut c)
        }
    })
}

/// How a batch kernel splits its work: `(samples per chunk, chunks, GEMM parallelism)`. A
/// chunk holds enough samples for about `target` GEMM columns (`per_sample` each), but the
/// batch is cut into at least one chunk per thread where it allows; chunks run in parallel
/// with single-threaded GEMMs, and only when there are fewer chunks than threads does each
/// GEMM use the threads itself.
pub fn plan_chunks(batch: usize, per_sample: usize, target: usize) -> (usize, usize, ::gemm::Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    let gs = target.div_ceil(per_sample.max(1)).clamp(1, batch.div_ceil(threads).max(1));
    let chunks = batch.div_ceil(gs);
    let par = if chunks >= threads { ::gemm::Parallelism::None } else { ::gemm::Parallelism::Rayon(threads) };
    (gs, chunks, par)
}

/// The transpose `[cols, rows]` of the row-major `[rows, cols]` matrix `m`, in parallel blocks
/// of 16 output rows (each source row contributes one cache line to a block).
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const BLOCK: usize = 16;
    let mut t = vec![0f32; rows * cols];
    if t.is_empty() {
        return t;
    }
    t.par_chunks_mut(BLOCK * rows).enumerate().for_each(|(b, dst)| {
        let c0 = b * BLOCK;
        let width = dst.len() / rows;
        for (r, src) in m.chunks_exact(cols).enumerate() {
            for (j, &v) in src[c0..c0 + width].iter().enumerate() {
                dst[j * rows + r] = v;
            }
        }
    });
    t
}

/// `Σ_rows m[r, :]` of the row-major `m` with `cols` columns, accumulated in f64.
pub fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut acc = vec![0f64; cols];
    for row in m.chunks_exact(cols) {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += f64::from(v));
    }
    acc.into_iter().map(|v| v as f32).collect()
}

/// The autodiff CPU device our kernels serve.
pub type Ad = Autodiff<Flex, NoCheckpointing>;
/// burn-flex's float tensor primitive.
pub type FlexFloat = <Flex as BackendTypes>::FloatTensorPrimitive;

/// A contiguous `f32` primitive holding the values of `t` (a handle clone when it already is
/// one), or `None` for another element type.
pub fn contiguous_f32(t: FlexFloat) -> Option<FlexFloat> {
    if t.as_slice::<f32>().is_some() {
        return Some(t);
    }
    let c = t.to_contiguous();
    c.as_slice::<f32>().is_some().then_some(c)
}

/// A float primitive wrapping `values` (no copy).
pub fn flex_from(values: Vec<f32>, shape: Vec<usize>) -> FlexFloat {
    FlexFloat::from_data(TensorData::new(values, shape))
}

/// Whether `x` is a plain CPU tensor (a cheap handle clone: the conversion fails on autodiff
/// tensors and on other backends).
pub fn is_plain<const D: usize>(x: &Tensor<D>) -> bool {
    x.clone().try_into_primitive::<Flex>().is_ok()
}

/// Whether `x` lives on the autodiff CPU device without gradient checkpointing.
pub fn is_autodiff<const D: usize>(x: &Tensor<D>) -> bool {
    x.clone().try_into_primitive::<Ad>().is_ok()
}

/// Lanes of the reductions below: independent accumulators that the compiler keeps in one
/// vector register (a float sum in one accumulator cannot be vectorised: it fixes the order).
pub const LANES: usize = 8;

/// `Σ f(i)` over `0..n` in [`LANES`] interleaved partial sums.
#[inline(always)]
pub fn sum_by(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a += f(base + j);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in full..n {
        s += f(i);
    }
    s
}

/// The largest element (−∞ for an empty slice), in [`LANES`] partial maxima.
#[inline(always)]
pub fn max_lanes(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    chunks.remainder().iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Whether this CPU has AVX2 and FMA (checked once; `DIFFUSION_NO_AVX2=1` says no, for
/// measurements).
pub fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        if std::env::var_os("DIFFUSION_NO_AVX2").is_some_and(|v| v != "0") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU has AVX-512F besides AVX2 and FMA (checked once; `DIFFUSION_NO_AVX512=1`
/// says no, for measurements).
pub fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        if std::env::var_os("DIFFUSION_NO_AVX512").is_some_and(|v| v != "0") || !has_avx2_fma() {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Calls the widest build of a kernel loop the CPU has: the AVX-512 one
/// (`#[target_feature(enable = "avx512f,avx2,fma")]`), the AVX2 + FMA one, or the baseline — each
/// a function whose body inlines the same `#[inline(always)]` code. Rust never contracts
/// `a·b + c` into an FMA on its own and the reductions fix their lane order in the code, so
/// every build gives bit-identical results; the wider ones run 16 or 8 lanes instead of 4.
macro_rules! dispatch {
    ($avx512:expr, $avx2:expr, $baseline:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::ops::cpu::has_avx512() {
                // SAFETY: the callee requires only AVX-512F, AVX2 and FMA, which the CPU was found
                // to have.
                #[allow(unsafe_code)]
                unsafe {
                    $avx512
                }
            } else if $crate::ops::cpu::has_avx2_fma() {
                // SAFETY: the callee requires only AVX2 and FMA, which the CPU was found to have.
                #[allow(unsafe_code)]
                unsafe {
                    $avx2
                }
            } else {
                $baseline
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $baseline
        }
    }};
}
pub(crate) use dispatch;

/// Defines `fn $name(args)` that runs `$body(args)` (an `#[inline(always)]` kernel loop) in its
/// AVX-512 build, its AVX2 + FMA build or its baseline build, the widest the CPU has (see
/// [`dispatch`]).
macro_rules! simd_variant {
    ($(#[$meta:meta])* $vis:vis fn $name:ident => $body:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            $crate::ops::cpu::dispatch!(avx512($($arg),*), avx2($($arg),*), $body($($arg),*))
        }
    };
}
pub(crate) use simd_variant;

#[cfg(test)]
mod tests {
    use super::with_scratch;

    /// A nested call on the same thread gets its own buffers of the asked lengths and leaves
    /// the outer call's contents alone.
    #[test]
    fn scratch_is_reentrant() {
        with_scratch([4, 1, 0], |a, b, c| {
            a.fill(1.0);
            b.fill(3.0);
            assert_eq!(c.len(), 0);
            with_scratch([3, 2, 5], |x, y, z| {
                assert_eq!((x.len(), y.len(), z.len()), (3, 2, 5));
                x.fill(2.0);
                y.fill(2.0);
                z.fill(2.0);
            });
            assert!(a.iter().all(|&v| v == 1.0) && b[0] == 3.0, "the outer buffers are untouched");
        });
        // And the thread's own buffers serve the next call, grown to the new length.
        with_scratch([6, 0, 0], |a, _, _| assert_eq!(a.len(), 6));
    }
}
