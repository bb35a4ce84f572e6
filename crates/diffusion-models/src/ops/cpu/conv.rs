//! 2-D convolution (any kernel size, stride and zero padding; dilation 1, one group) as GEMMs
//! over im2col tiles, in NCHW throughout.
//!
//! The batch is cut into chunks of `G` samples (one sample at high resolution; several at low
//! resolution, so that every GEMM has at least ≈ 256 columns); chunks run in parallel, each
//! with a single-threaded GEMM and its own im2col buffer, which lives in a thread-local scratch
//! space reused from call to call (no fresh buffer per call). Per chunk, with `K = C_in·k_h·k_w`
//! and `N = G·H_out·W_out`:
//! - forward: `Y[C_out, N] = W[C_out, K] · col(X)[K, N] + b`;
//! - input gradient: `dcol[K, N] = Wᵀ · dY`, scattered back (col2im);
//! - weight gradient: `dWᵀ += col(X)[K, N] · dYᵀ[N, C_out]` — one well-shaped GEMM per chunk
//!   into a per-task accumulator, transposed once at the end; `db += Σ dY`.
//!
//! A 1×1 convolution with stride 1 and no padding uses the input itself as its im2col matrix.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::gemm_into;
use super::simd_variant;
use super::winograd;
use super::{Ad, FlexFloat, contiguous_f32, flex_from, plan_chunks, with_scratch};

/// Shape and hyper-parameters of one convolution call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Batch size.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height and width.
    pub hw: [usize; 2],
    /// Output channels.
    pub c_out: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride (rows, columns).
    pub stride: [usize; 2],
    /// Zero padding at the top and on the left (the bottom and right follow from the output
    /// size).
    pub pad: [usize; 2],
    /// Output height and width.
    pub out: [usize; 2],
}

impl Geometry {
    /// The geometry for an input `[B, C_in, H, W]`, a weight `[C_out, C_in, k_h, k_w]` and
    /// padding `(top, left, bottom, right)`; `None` when no output position remains.
    pub fn new(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        (top, left, bottom, right): (usize, usize, usize, usize),
    ) -> Option<Self> {
        let [batch, c_in, h, w] = x;
        let [c_out, wc, kh, kw] = weight;
        if wc != c_in || stride.contains(&0) || kh == 0 || kw == 0 {
            return None;
        }
        let (ph, pw) = (h + top + bottom, w + left + right);
        if ph < kh || pw < kw {
            return None;
        }
        let out = [(ph - kh) / stride[0] + 1, (pw - kw) / stride[1] + 1];
        Some(Self { batch, c_in, hw: [h, w], c_out, kernel: [kh, kw], stride, pad: [top, left], out })
    }

    /// Rows of the im2col matrix: `C_in·k_h·k_w`.
    fn k(&self) -> usize {
        self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// Output positions per sample.
    fn p(&self) -> usize {
        self.out[0] * self.out[1]
    }

    fn in_len(&self) -> usize {
        self.c_in * self.hw[0] * self.hw[1]
    }

    fn out_len(&self) -> usize {
        self.c_out * self.p()
    }

    /// Whether the input is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.pad == [0, 0]
    }
}

/// The valid output columns `[lo, hi)` of kernel column `kx` for stride 1: those reading input
/// column `ox + kx − pad` inside `[0, w)`.
fn valid_cols(ow: usize, w: usize, kx: usize, pad: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(kx).min(ow);
    let hi = (w + pad).saturating_sub(kx).min(ow).max(lo);
    (lo, hi)
}

/// Writes the im2col matrix of `gs` consecutive samples `x` into `col` (`[K, gs·P]`, row-major).
#[inline(always)]
fn im2col_body(g: &Geometry, x: &[f32], gs: usize, col: &mut [f32]) {
    let ([h, w], [_, ow], [kh, kw]) = (g.hw, g.out, g.kernel);
    let ([sh, sw], [pt, pl]) = (g.stride, g.pad);
    let (p, ld) = (g.p(), gs * g.p());
    for ci in 0..g.c_in {
        for ky in 0..kh {
            for kx in 0..kw {
                let r = (ci * kh + ky) * kw + kx;
                let (lo, hi) = valid_cols(ow, w, kx, pl);
                for s in 0..gs {
                    let src = &x[(s * g.c_in + ci) * h * w..][..h * w];
                    let dst = &mut col[r * ld + s * p..][..p];
                    for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                        let iy = (oy * sh + ky).wrapping_sub(pt);
                        if iy >= h {
                            row.fill(0.0);
                            continue;
                        }
                        let srow = &src[iy * w..][..w];
                        if sw == 1 {
                            row[..lo].fill(0.0);
                            row[hi..].fill(0.0);
                            row[lo..hi].copy_from_slice(&srow[lo + kx - pl..hi + kx - pl]);
                        } else {
                            for (ox, d) in row.iter_mut().enumerate() {
                                let ix = (ox * sw + kx).wrapping_sub(pl);
                                *d = if ix < w { srow[ix] } else { 0.0 };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds the columns `dcol` (`[K, gs·P]`) back onto the input positions they were read from
/// (the adjoint of [`im2col`]), into `dx` (`gs` samples, which must start at zero).
#[inline(always)]
fn col2im_body(g: &Geometry, dcol: &[f32], gs: usize, dx: &mut [f32]) {
    let ([h, w], [_, ow], [kh, kw]) = (g.hw, g.out, g.kernel);
    let ([sh, sw], [pt, pl]) = (g.stride, g.pad);
    let (p, ld) = (g.p(), gs * g.p());
    for s in 0..gs {
        for ci in 0..g.c_in {
            let dst = &mut dx[(s * g.c_in + ci) * h * w..][..h * w];
            for ky in 0..kh {
                for kx in 0..kw {
                    let r = (ci * kh + ky) * kw + kx;
                    let (lo, hi) = valid_cols(ow, w, kx, pl);
                    let src = &dcol[r * ld + s * p..][..p];
                    for (oy, row) in src.chunks_exact(ow).enumerate() {
                        let iy = (oy * sh + ky).wrapping_sub(pt);
                        if iy >= h {
                            continue;
                        }
                        let drow = &mut dst[iy * w..][..w];
                        if sw == 1 {
                            for (d, &v) in drow[lo + kx - pl..hi + kx - pl].iter_mut().zip(&row[lo..hi]) {
                                *d += v;
                            }
                        } else {
                            for (ox, &v) in row.iter().enumerate() {
                                let ix = (ox * sw + kx).wrapping_sub(pl);
                                if ix < w {
                                    drow[ix] += v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Chunking of the batch and the GEMM parallelism inside each chunk.
fn plan(g: &Geometry) -> (usize, usize, Parallelism) {
    // ≈ 256 GEMM columns per chunk.
    plan_chunks(g.batch, g.p(), 256)
}

/// The forward convolution of contiguous NCHW `x` with `weight` (`[C_out, K]`) and an optional
/// bias: the NCHW output.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    if let Some(s) = winograd_shape(g) {
        let u = winograd::weights(&s, winograd::forward_kernel(weight, g.c_in));
        return winograd::conv(&s, x, &u, bias);
    }
    let (k, p, co) = (g.k(), g.p(), g.c_out);
    let (gs, _, par) = plan(g);
    let mut out = vec![0f32; g.batch * g.out_len()];
    out.par_chunks_mut(gs * g.out_len()).zip(x.par_chunks(gs * g.in_len())).for_each(|(y, xs)| {
        let gs = xs.len() / g.in_len();
        let n = gs * p;
        let direct = gs == 1;
        let col_len = if g.pointwise() && direct { 0 } else { k * n };
        with_scratch([col_len, if direct { 0 } else { co * n }, 0], |col, tile, _| {
            let rhs: &[f32] = if col_len == 0 {
                xs
            } else {
                im2col(g, xs, gs, col);
                col
            };
            let dst: &mut [f32] = if direct { y } else { tile };
            if let Some(b) = bias {
                for (row, &bv) in dst.chunks_exact_mut(n).zip(b) {
                    row.fill(bv);
                }
            }
            gemm_into([co, n, k], dst, n, bias.is_some(), (weight, 1, k), (rhs, 1, n), 1.0, par);
            if !direct {
                for s in 0..gs {
                    for c in 0..co {
                        y[(s * co + c) * p..][..p].copy_from_slice(&tile[c * n + s * p..][..p]);
                    }
                }
            }
        });
    });
    out
}

/// `dx` (when asked) and `(dW, db)` (when asked).
type Grads = (Option<Vec<f32>>, Option<(Vec<f32>, Vec<f32>)>);

/// Gradients of a convolution given `dy` (NCHW, contiguous): `dx` when asked, and `dW`
/// (`[C_out, K]`) with `db` (`[C_out]`) when asked.
pub fn backward(g: &Geometry, x: &[f32], weight: &[f32], dy: &[f32], need_dx: bool, need_dw: bool) -> Grads {
    let (k, p, co) = (g.k(), g.p(), g.c_out);
    let (gs, chunks, par) = plan(g);
    // The input gradient by Winograd where it applies (a convolution of dY with the flipped,
    // channel-swapped kernel); the loop below then forms only dW and db.
    let winograd_dx = match winograd_shape(g) {
        Some(s) if need_dx => {
            let t = winograd::Shape { batch: s.batch, c_in: s.c_out, c_out: s.c_in, hw: s.hw };
            let u = winograd::weights(&t, winograd::gradient_kernel(weight, g.c_in));
            Some(winograd::conv(&t, dy, &u, None))
        }
        _ => None,
    };
    if let Some(s) = winograd_shape(g) {
        let dwb = need_dw.then(|| winograd::weight_grad(&s, x, dy));
        return (winograd_dx, dwb);
    }
    let mut dx = need_dx.then(|| vec![0f32; g.batch * g.in_len()]);
    let dx_chunks: Vec<Option<&mut [f32]>> = match dx.as_mut() {
        Some(v) => v.chunks_mut(gs * g.in_len()).map(Some).collect(),
        None => (0..chunks).map(|_| None).collect(),
    };
    let zero = || (vec![0f32; if need_dw { co * k } else { 0 }], vec![0f64; if need_dw { co } else { 0 }]);
    let (dw, db) = dx_chunks
        .into_par_iter()
        .enumerate()
        .fold(zero, |(mut dw, mut db), (i, dxs)| {
            let s0 = i * gs;
            let gs = gs.min(g.batch - s0);
            let n = gs * p;
            let xs = &x[s0 * g.in_len()..][..gs * g.in_len()];
            let dys = &dy[s0 * g.out_len()..][..gs * g.out_len()];
            let direct = gs == 1;
            let own_col = !(g.pointwise() && direct);
            let col_len = if need_dw && own_col { k * n } else { 0 };
            let dcol_len = if need_dx && own_col { k * n } else { 0 };
            with_scratch([col_len, if direct { 0 } else { co * n }, dcol_len], |col, tile, dcol| {
                // dY as a [C_out, N] matrix.
                let dyt: &[f32] = if direct {
                    dys
                } else {
                    for s in 0..gs {
                        for c in 0..co {
                            tile[c * n + s * p..][..p].copy_from_slice(&dys[(s * co + c) * p..][..p]);
                        }
                    }
                    tile
                };
                if need_dw {
                    let cols: &[f32] = if own_col {
                        im2col(g, xs, gs, col);
                        col
                    } else {
                        xs
                    };
                    // dWᵀ[K, co] += col[K, N] · dYᵀ[N, co] (this orientation packs well: ≈ 3×
                    // faster than dY · colᵀ at 32 channels).
                    gemm_into([k, co, n], &mut dw, co, true, (cols, 1, n), (dyt, n, 1), 1.0, par);
                    for (acc, row) in db.iter_mut().zip(dyt.chunks_exact(n)) {
                        *acc += row.iter().map(|&v| f64::from(v)).sum::<f64>();
                    }
                }
                if let Some(dxs) = dxs {
                    // dcol[K, N] = Wᵀ[K, co] · dY[co, N].
                    if own_col {
                        gemm_into([k, n, co], dcol, n, false, (weight, k, 1), (dyt, 1, n), 1.0, par);
                        col2im(g, dcol, gs, dxs);
                    } else {
                        gemm_into([k, n, co], dxs, n, false, (weight, k, 1), (dyt, 1, n), 1.0, par);
                    }
                }
            });
            (dw, db)
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
    // The accumulator holds dWᵀ ([K, C_out]).
    let dwb = need_dw.then(|| (super::transpose(&dw, k, co), db.into_iter().map(|v| v as f32).collect()));
    (winograd_dx.or(dx), dwb)
}

/// The Winograd shape of `g` when F(2×2, 3×3) serves it: a 3×3 kernel, stride 1, padding 1 on
/// every side, and a size where the saved multiplications outweigh the transforms, whose loops
/// run along a row of tiles and whose cost per multiply-add saved falls with the channels:
/// rows of ≥ 8 tiles (16 pixels) with ≥ 32 channels (measured with
/// `benches/examples/convbench.rs`: at 8 × 8 with 256 channels im2col is faster, forward +
/// backward 5.3 vs 7.9 ms; at 16 × 16 with 64 channels and batch 32 Winograd's forward is 1.6 vs
/// 2.0 ms and forward + backward 5.7–6.3 vs 6.2–6.3 ms; at 32 × 32 with 128 channels Winograd's
/// forward + backward is 1.3× faster).
/// `DIFFUSION_NO_WINOGRAD=1` turns it off (for measurements).
fn winograd_shape(g: &Geometry) -> Option<winograd::Shape> {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var_os("DIFFUSION_NO_WINOGRAD").is_some_and(|v| v != "0"));
    let fits = g.kernel == [3, 3] && g.stride == [1, 1] && g.pad == [1, 1] && g.out == g.hw;
    let (tiles, ch) = (g.hw[1].div_ceil(2), g.c_in.min(g.c_out));
    let worth = tiles >= 8 && ch >= 32;
    (!off && fits && worth).then_some(winograd::Shape {
        batch: g.batch,
        c_in: g.c_in,
        c_out: g.c_out,
        hw: g.hw,
    })
}

/// What the backward pass keeps: the input, the weight and the geometry.
#[derive(Debug, Clone)]
struct ConvState {
    x: FlexFloat,
    weight: FlexFloat,
    geometry: Geometry,
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let ConvState { x, weight, geometry: g } = ops.state;
        let [px, pw, pb] = ops.parents;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node)).expect("f32 output gradient");
        let (xs, ws, dys) = (
            x.as_slice::<f32>().expect("contiguous f32 input"),
            weight.as_slice::<f32>().expect("contiguous f32 weight"),
            dy.as_slice::<f32>().expect("contiguous f32 output gradient"),
        );
        let (dx, dwb) = backward(&g, xs, ws, dys, px.is_some(), pw.is_some() || pb.is_some());
        if let (Some(node), Some(dx)) = (px, dx) {
            grads.register::<Flex>(node.id, flex_from(dx, vec![g.batch, g.c_in, g.hw[0], g.hw[1]]));
        }
        if let Some((dw, db)) = dwb {
            if let Some(node) = pw {
                grads.register::<Flex>(
                    node.id,
                    flex_from(dw, vec![g.c_out, g.c_in, g.kernel[0], g.kernel[1]]),
                );
            }
            if let Some(node) = pb {
                grads.register::<Flex>(node.id, flex_from(db, vec![g.c_out]));
            }
        }
    }
}

/// The convolution on the CPU device, plain or autodiff; `None` where the kernel does not
/// apply (another device or element type, a shape that leaves no output).
pub fn conv2d(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: [usize; 2],
    padding: (usize, usize, usize, usize),
) -> Option<Tensor<4>> {
    let g = Geometry::new(x.dims(), weight.dims(), stride, padding)?;
    if g.batch == 0 || g.c_in == 0 || g.c_out == 0 {
        return None;
    }
    let shape = vec![g.batch, g.c_out, g.out[0], g.out[1]];
    if let Ok(xp) = x.clone().try_into_primitive::<Flex>() {
        let xp = contiguous_f32(xp)?;
        let wp = contiguous_f32(weight.clone().try_into_primitive::<Flex>().ok()?)?;
        let bp = match bias {
            Some(b) => Some(contiguous_f32(b.clone().try_into_primitive::<Flex>().ok()?)?),
            None => None,
        };
        let out = forward(
            &g,
            xp.as_slice::<f32>()?,
            wp.as_slice::<f32>()?,
            bp.as_ref().and_then(|b| b.as_slice::<f32>()),
        );
        return Some(Tensor::from_primitive::<Flex>(flex_from(out, shape)));
    }
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let wa = weight.clone().try_into_primitive::<Ad>().ok()?;
    let ba = match bias {
        Some(b) => b.clone(),
        None => Tensor::<1>::zeros([g.c_out], &x.device()),
    }
    .try_into_primitive::<Ad>()
    .ok()?;
    let xp = contiguous_f32(xa.primitive().clone())?;
    let wp = contiguous_f32(wa.primitive().clone())?;
    let bp = contiguous_f32(ba.primitive().clone())?;
    let out = forward(&g, xp.as_slice::<f32>()?, wp.as_slice::<f32>()?, bias.and(bp.as_slice::<f32>()));
    let out = flex_from(out, shape);
    let result = match ConvBackward
        .prepare::<NoCheckpointing>([xa.node(), wa.node(), ba.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(ConvState { x: xp, weight: wp, geometry: g }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(result))
}

simd_variant!(
    /// See [`im2col_body`].
    fn im2col => im2col_body(g: &Geometry, x: &[f32], gs: usize, col: &mut [f32])
);

simd_variant!(
    /// See [`col2im_body`].
    fn col2im => col2im_body(g: &Geometry, dcol: &[f32], gs: usize, dx: &mut [f32])
);
