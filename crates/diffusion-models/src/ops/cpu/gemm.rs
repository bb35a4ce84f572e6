//! The one call into the GEMM crate, with its operand extents checked.

use gemm::Parallelism;

/// `dst[m, n] (+)= scale · lhs[m, k] · rhs[k, n]`, operands given as (slice, column stride, row
/// stride); `dst` is row-major with row stride `dst_rs`.
#[allow(clippy::too_many_arguments, unsafe_code)]
pub fn gemm_into(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_cs, lhs_rs): (&[f32], usize, usize),
    (rhs, rhs_cs, rhs_rs): (&[f32], usize, usize),
    scale: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The extents every operand must cover.
    let span = |rows: usize, cols: usize, cs: usize, rs: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
    assert!(dst.len() >= span(m, n, 1, dst_rs), "gemm: destination too short");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..][..n].fill(0.0);
            }
        }
        return;
    }
    assert!(lhs.len() >= span(m, k, lhs_cs, lhs_rs), "gemm: lhs too short");
    assert!(rhs.len() >= span(k, n, rhs_cs, rhs_rs), "gemm: rhs too short");
    // SAFETY: the three extents were checked above; `dst` is exclusively borrowed and does not
    // alias the shared operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}
