//! 3×3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray 2016): each 2×2 output tile is `Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d Bᵀᵀ) ] A` over the 4×4
//! input tile `d`, so that the channel contraction becomes 16 GEMMs
//! `M_ξ[C_out, T] = U_ξ[C_out, C_in] · V_ξ[C_in, T]` over the T tiles — 16 multiply-adds per
//! tile and channel pair instead of 36, 2.25× fewer than im2col. The transforms use only 0, ±1
//! and ±½, so the rounding error stays at the level of the direct sum (the equality tests hold
//! at 1e-5).
//!
//! The input gradient of such a convolution is the same convolution of `dY` with the kernel
//! flipped and its channel axes swapped, so it runs through the same routine.

use rayon::prelude::*;

use super::gemm::gemm_into;
use super::simd_variant;
use super::{plan_chunks, transpose, with_scratch};

/// Tiles (GEMM columns) per chunk, at least one sample: V and M of a chunk stay close to L2 size
/// (measured with convbench: 512 → 128 is 10–20 % faster at 32 × 32 and 16 × 16).
const CHUNK_TILES: usize = 128;

/// Shapes of one Winograd convolution (3×3, stride 1, padding 1: output size = input size).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Batch size.
    pub batch: usize,
    /// Input channels (the GEMMs' contraction).
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Height and width.
    pub hw: [usize; 2],
}

impl Shape {
    /// Tile rows and columns: ⌈H/2⌉, ⌈W/2⌉.
    fn tiles(&self) -> [usize; 2] {
        [self.hw[0].div_ceil(2), self.hw[1].div_ceil(2)]
    }

    /// Scratch lengths for `t` tiles — V (`[16, C_in, T]`), M or dM (`[16, C_out, T]`), a plane
    /// (a padded channel of dY, or the input transform's `d·B` of every padded row) with 16
    /// tile-row temporaries — and the plane's length.
    fn scratch(&self, t: usize) -> ([usize; 3], usize) {
        let [th, tw] = self.tiles();
        let plane = (2 * th + 2) * (4 * tw + 2);
        ([16 * self.c_in * t, 16 * self.c_out * t, plane + 16 * tw], plane)
    }

    fn tiles_per_sample(&self) -> usize {
        let [th, tw] = self.tiles();
        th * tw
    }
}

/// Rows of Winograd's kernel transform `G` for F(2, 3).
const G: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// The transformed weights `[16, C_out, C_in]`, `U_ξ = (G g Gᵀ)[ξ]`, of a convolution whose
/// kernel for output channel `o`, input channel `i` is `kernel(o, i)` (row-major 3×3).
pub fn weights(s: &Shape, kernel: impl Fn(usize, usize) -> [f32; 9] + Sync) -> Vec<f32> {
    let (m, k) = (s.c_out, s.c_in);
    let mut u = vec![0f32; 16 * m * k];
    u.par_chunks_mut(m * k).enumerate().for_each(|(xi, dst)| {
        let (ga, gb) = (G[xi / 4], G[xi % 4]);
        let coef: [f32; 9] = std::array::from_fn(|j| ga[j / 3] * gb[j % 3]);
        for (j, d) in dst.iter_mut().enumerate() {
            let g = kernel(j / k, j % k);
            *d = coef.iter().zip(&g).map(|(c, v)| c * v).sum();
        }
    });
    u
}

/// The kernel `[C_out, C_in, 3, 3]` as given.
pub fn forward_kernel(w: &[f32], c_in: usize) -> impl Fn(usize, usize) -> [f32; 9] + Sync + '_ {
    move |o, i| std::array::from_fn(|j| w[(o * c_in + i) * 9 + j])
}

/// The kernel of the input gradient: output channel `i`, input channel `o`, flipped in space.
pub fn gradient_kernel(w: &[f32], c_in: usize) -> impl Fn(usize, usize) -> [f32; 9] + Sync + '_ {
    move |i, o| std::array::from_fn(|j| w[(o * c_in + i) * 9 + 8 - j])
}

/// `V = Bᵀ d B` for every tile of `gs` samples of `x` into `v` (`[16, C_in, T]`). Per channel,
/// first `d·B` once for every padded row (`rows[y][b][tx]`, from the row split into its even
/// and odd columns so that every loop is unit-stride and vectorises; tiles overlap by two rows,
/// so each row serves two tile rows), then `Bᵀ·(d B)` per tile row, written as contiguous runs
/// of tiles.
#[inline(always)]
fn input_transform_body(s: &Shape, x: &[f32], gs: usize, v: &mut [f32], rows: &mut [f32], e: &mut [f32]) {
    let ([h, w], [th, tw]) = (s.hw, s.tiles());
    let t_all = gs * th * tw;
    let stride_xi = s.c_in * t_all;
    let (ev, od) = e[..2 * (tw + 1)].split_at_mut(tw + 1);
    // Padded rows 0 and h + 1 (and h + 2 for an odd height) are zero: their d·B too.
    let row_len = 4 * tw;
    rows[..row_len].fill(0.0);
    rows[(h + 1) * row_len..(2 * th + 2) * row_len].fill(0.0);
    for smp in 0..gs {
        for ci in 0..s.c_in {
            let src = &x[(smp * s.c_in + ci) * h * w..][..h * w];
            for (y, row) in src.chunks_exact(w).enumerate() {
                // Padded column c holds x[c − 1]: odd columns 2j + 1 ← x[2j] into od[j], even
                // columns 2j + 2 ← x[2j + 1] into ev[j + 1]; the rest is padding.
                let pairs = w / 2;
                ev[0] = 0.0;
                ev[pairs + 1..].fill(0.0);
                od[pairs..].fill(0.0);
                for ((o, e), pair) in od.iter_mut().zip(&mut ev[1..]).zip(row.chunks_exact(2)) {
                    *o = pair[0];
                    *e = pair[1];
                }
                if w % 2 == 1 {
                    od[pairs] = row[w - 1];
                }
                let out = &mut rows[(y + 1) * row_len..][..row_len];
                let (e0, rest) = out.split_at_mut(tw);
                let (e1, rest) = rest.split_at_mut(tw);
                let (e2, e3) = rest.split_at_mut(tw);
                // d = (ev[tx], od[tx], ev[tx + 1], od[tx + 1]) for tile column tx.
                let (ev0, ev1, od0, od1) = (&ev[..tw], &ev[1..], &od[..tw], &od[1..]);
                for (d, (a, b)) in e0.iter_mut().zip(ev0.iter().zip(ev1)) {
                    *d = a - b;
                }
                for (d, (a, b)) in e1.iter_mut().zip(od0.iter().zip(ev1)) {
                    *d = a + b;
                }
                for (d, (a, b)) in e2.iter_mut().zip(ev1.iter().zip(od0)) {
                    *d = a - b;
                }
                for (d, (a, b)) in e3.iter_mut().zip(od0.iter().zip(od1)) {
                    *d = a - b;
                }
            }
            let base = ci * t_all + smp * th * tw;
            for ty in 0..th {
                let at = base + ty * tw;
                for b in 0..4 {
                    let row = |i: usize| &rows[(2 * ty + i) * row_len + b * tw..][..tw];
                    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                    let out = |a: usize| (4 * a + b) * stride_xi + at;
                    for (d, (x0, x2)) in v[out(0)..][..tw].iter_mut().zip(r0.iter().zip(r2)) {
                        *d = x0 - x2;
                    }
                    for (d, (x1, x2)) in v[out(1)..][..tw].iter_mut().zip(r1.iter().zip(r2)) {
                        *d = x1 + x2;
                    }
                    for (d, (x1, x2)) in v[out(2)..][..tw].iter_mut().zip(r1.iter().zip(r2)) {
                        *d = x2 - x1;
                    }
                    for (d, (x1, x3)) in v[out(3)..][..tw].iter_mut().zip(r1.iter().zip(r3)) {
                        *d = x1 - x3;
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` (+ bias) from `m` (`[16, C_out, T]`) into `y` (`gs` samples, NCHW), a tile row
/// at a time across its tiles.
#[inline(always)]
fn output_transform_body(
    s: &Shape,
    m: &[f32],
    gs: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    e: &mut [f32],
) {
    let ([h, w], [th, tw]) = (s.hw, s.tiles());
    let t_all = gs * th * tw;
    let stride_xi = s.c_out * t_all;
    for smp in 0..gs {
        for co in 0..s.c_out {
            let bv = bias.map_or(0.0, |b| b[co]);
            let dst = &mut y[(smp * s.c_out + co) * h * w..][..h * w];
            let base = co * t_all + smp * th * tw;
            for ty in 0..th {
                let at = base + ty * tw;
                let q = |xi: usize| &m[xi * stride_xi + at..][..tw];
                // Aᵀ M: for each column j, rows m0 + m1 + m2 and m1 − m2 − m3 → e[j], e[4 + j].
                for j in 0..4 {
                    let (q0, q1, q2, q3) = (q(j), q(4 + j), q(8 + j), q(12 + j));
                    let (top, bottom) = e.split_at_mut(4 * tw);
                    let (t, b) = (&mut top[j * tw..][..tw], &mut bottom[j * tw..][..tw]);
                    for tx in 0..tw {
                        t[tx] = q0[tx] + q1[tx] + q2[tx];
                        b[tx] = q1[tx] - q2[tx] - q3[tx];
                    }
                }
                // (Aᵀ M) A: the two output columns of each tile, for both output rows.
                for i in 0..2 {
                    let yy = 2 * ty + i;
                    if yy >= h {
                        continue;
                    }
                    let r = |j: usize| &e[(4 * i + j) * tw..][..tw];
                    let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                    let out = &mut dst[yy * w..][..w];
                    let pairs = w / 2;
                    for tx in 0..pairs {
                        out[2 * tx] = r0[tx] + r1[tx] + r2[tx] + bv;
                        out[2 * tx + 1] = r1[tx] - r2[tx] - r3[tx] + bv;
                    }
                    if w % 2 == 1 {
                        out[w - 1] = r0[pairs] + r1[pairs] + r2[pairs] + bv;
                    }
                }
            }
        }
    }
}

/// The convolution of NCHW `x` with transformed weights `u` (from [`weights`]) and an optional
/// bias: the NCHW output.
pub fn conv(s: &Shape, x: &[f32], u: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let tps = s.tiles_per_sample();
    let (gs, _, par) = plan_chunks(s.batch, tps, CHUNK_TILES);
    let [h, w] = s.hw;
    let (in_len, out_len) = (s.c_in * h * w, s.c_out * h * w);
    let mut out = vec![0f32; s.batch * out_len];
    out.par_chunks_mut(gs * out_len).zip(x.par_chunks(gs * in_len)).for_each(|(y, xs)| {
        let gs = xs.len() / in_len;
        let t = gs * tps;
        let (lens, plane_len) = s.scratch(t);
        with_scratch(lens, |v, m, scratch| {
            let (plane, e) = scratch.split_at_mut(plane_len);
            input_transform(s, xs, gs, v, plane, e);
            let (mk, kt, mt) = (s.c_out * s.c_in, s.c_in * t, s.c_out * t);
            for xi in 0..16 {
                gemm_into(
                    [s.c_out, t, s.c_in],
                    &mut m[xi * mt..(xi + 1) * mt],
                    t,
                    false,
                    (&u[xi * mk..(xi + 1) * mk], 1, s.c_in),
                    (&v[xi * kt..(xi + 1) * kt], 1, t),
                    1.0,
                    par,
                );
            }
            output_transform(s, m, gs, bias, y, e);
        });
    });
    out
}

/// `dM = A dY Aᵀ` (the adjoint of the output transform) for every tile of `gs` samples of `dy`
/// (NCHW, `C_out` channels) into `dm` (`[16, C_out, T]`).
#[inline(always)]
fn grad_transform_body(s: &Shape, dy: &[f32], gs: usize, dm: &mut [f32], plane: &mut [f32], e: &mut [f32]) {
    let ([h, w], [th, tw]) = (s.hw, s.tiles());
    let pw = 2 * tw;
    let t_all = gs * th * tw;
    let stride_xi = s.c_out * t_all;
    plane.fill(0.0);
    for smp in 0..gs {
        for co in 0..s.c_out {
            let src = &dy[(smp * s.c_out + co) * h * w..][..h * w];
            for (y, row) in src.chunks_exact(w).enumerate() {
                plane[y * pw..][..w].copy_from_slice(row);
            }
            let base = co * t_all + smp * th * tw;
            for ty in 0..th {
                let (r0, r1) = (&plane[2 * ty * pw..][..pw], &plane[(2 * ty + 1) * pw..][..pw]);
                // A·dY: rows y0, y0 + y1, y0 − y1, −y1, each a (left, right) pair: e[2a], e[2a + 1].
                {
                    let mut parts = e.chunks_exact_mut(tw);
                    let mut next = || parts.next().expect("16 rows of scratch");
                    let (l0, q0, l1, q1, l2, q2, l3, q3) =
                        (next(), next(), next(), next(), next(), next(), next(), next());
                    for tx in 0..tw {
                        let (a, b, c, d) = (r0[2 * tx], r0[2 * tx + 1], r1[2 * tx], r1[2 * tx + 1]);
                        l0[tx] = a;
                        q0[tx] = b;
                        l1[tx] = a + c;
                        q1[tx] = b + d;
                        l2[tx] = a - c;
                        q2[tx] = b - d;
                        l3[tx] = -c;
                        q3[tx] = -d;
                    }
                }
                // (A dY) Aᵀ: (p, q) → p, p + q, p − q, −q.
                let at = base + ty * tw;
                for a in 0..4 {
                    let (p, q) = (&e[2 * a * tw..][..tw], &e[(2 * a + 1) * tw..][..tw]);
                    let out = |b: usize| (4 * a + b) * stride_xi + at;
                    dm[out(0)..][..tw].copy_from_slice(p);
                    for (d, (x, y)) in dm[out(1)..][..tw].iter_mut().zip(p.iter().zip(q)) {
                        *d = x + y;
                    }
                    for (d, (x, y)) in dm[out(2)..][..tw].iter_mut().zip(p.iter().zip(q)) {
                        *d = x - y;
                    }
                    for (d, y) in dm[out(3)..][..tw].iter_mut().zip(q) {
                        *d = -y;
                    }
                }
            }
        }
    }
}

/// The weight gradient `[C_out, C_in, 3, 3]` and the bias gradient `[C_out]` of the
/// convolution of `x` given `dy`, in the Winograd domain: `dU_ξ = dM_ξ · V_ξᵀ` (16 GEMMs
/// contracting over the tiles), then `dg = Gᵀ dU G`.
pub fn weight_grad(s: &Shape, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let tps = s.tiles_per_sample();
    let (gs, _, par) = plan_chunks(s.batch, tps, CHUNK_TILES);
    let [h, w] = s.hw;
    let (in_len, out_len, mk) = (s.c_in * h * w, s.c_out * h * w, s.c_in * s.c_out);
    let zero = || (vec![0f32; 16 * mk], vec![0f64; s.c_out]);
    // Per task: dUᵀ ([16, C_in, C_out]: this orientation packs well) and Σ dY per channel.
    let (dut, db) = x
        .par_chunks(gs * in_len)
        .zip(dy.par_chunks(gs * out_len))
        .fold(zero, |(mut dut, mut db), (xs, dys)| {
            let gs = xs.len() / in_len;
            let t = gs * tps;
            let (lens, plane_len) = s.scratch(t);
            with_scratch(lens, |v, dm, scratch| {
                let (plane, e) = scratch.split_at_mut(plane_len);
                input_transform(s, xs, gs, v, plane, e);
                grad_transform(s, dys, gs, dm, plane, e);
                let (kt, mt) = (s.c_in * t, s.c_out * t);
                for xi in 0..16 {
                    gemm_into(
                        [s.c_in, s.c_out, t],
                        &mut dut[xi * mk..(xi + 1) * mk],
                        s.c_out,
                        true,
                        (&v[xi * kt..(xi + 1) * kt], 1, t),
                        (&dm[xi * mt..(xi + 1) * mt], t, 1),
                        1.0,
                        par,
                    );
                }
            });
            for (k, plane) in dys.chunks_exact(h * w).enumerate() {
                db[k % s.c_out] += plane.iter().map(|&v| f64::from(v)).sum::<f64>();
            }
            (dut, db)
        })
        .reduce(zero, |(mut a, mut ab), (b, bb)| {
            for (x, y) in a.iter_mut().zip(&b) {
                *x += y;
            }
            for (x, y) in ab.iter_mut().zip(&bb) {
                *x += y;
            }
            (a, ab)
        });
    // dg[ky][kx] = Σ_{a,b} G[a][ky] G[b][kx] dU[4a + b], per input channel over contiguous
    // rows of C_out (dUᵀ is [16, C_in, C_out]) into dgᵀ [C_in, 9, C_out], skipping G's zeros;
    // then the transpose into [C_out, C_in·9].
    let co = s.c_out;
    let mut dgt = vec![0f32; mk * 9];
    dgt.par_chunks_mut(9 * co).enumerate().for_each(|(ci, dst)| {
        for (kk, acc) in dst.chunks_exact_mut(co).enumerate() {
            let (ky, kx) = (kk / 3, kk % 3);
            for xi in 0..16 {
                let c = G[xi / 4][ky] * G[xi % 4][kx];
                if c != 0.0 {
                    let src = &dut[xi * mk + ci * co..][..co];
                    acc.iter_mut().zip(src).for_each(|(a, &v)| *a += c * v);
                }
            }
        }
    });
    (transpose(&dgt, s.c_in * 9, co), db.into_iter().map(|v| v as f32).collect())
}

simd_variant!(
    /// See [`input_transform_body`].
    fn input_transform => input_transform_body(s: &Shape, x: &[f32], gs: usize, v: &mut [f32], rows: &mut [f32], e: &mut [f32])
);

simd_variant!(
    /// See [`output_transform_body`].
    fn output_transform => output_transform_body(s: &Shape, m: &[f32], gs: usize, bias: Option<&[f32]>, y: &mut [f32], e: &mut [f32])
);

simd_variant!(
    /// See [`grad_transform_body`].
    fn grad_transform => grad_transform_body(s: &Shape, dy: &[f32], gs: usize, dm: &mut [f32], plane: &mut [f32], e: &mut [f32])
);
