//! The whole 2-D MLP denoiser ([`Mlp`](crate::Mlp)) as one op: sinusoidal embedding of t,
//! `e = SiLU(emb·W_t + b_t)`, `h_l = SiLU(h_{l−1}·W_l + b_l + e)` for the input and hidden
//! layers, `y = h·W_o + b_o`.
//!
//! At the MLP's sizes (1024 × 128) one layer is ≈ 0.1 ms of arithmetic, so a graph of ≈ 15
//! burn ops pays more in per-op costs (allocation, a rayon dispatch and wake-up per op, the
//! autodiff bookkeeping) than in work. Here the batch is cut into row blocks and each rayon
//! task runs the whole network for its rows in cache-sized buffers: one parallel dispatch per
//! forward pass. On the autodiff device the op is one graph node whose parents are `x` and
//! the concatenation of every parameter (`θ`, built by burn's `cat`, whose backward slices the
//! flat gradient back into each parameter); its backward runs the chain `dz_l` by row blocks,
//! then the weight gradients as one GEMM each over the whole batch, the GEMMs in parallel.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::gemm_into;
use super::linear::{silu_grad, silu_into};
use super::{Ad, FlexFloat, column_sums, contiguous_f32, flex_from, plan_chunks, simd_variant, with_scratch};

/// Rows per block: the activations of a block (`rows × hidden` per layer) stay in L2.
const BLOCK_ROWS: usize = 128;

/// `(sin x, cos x)` in f32, branch-free so that it vectorises: `x = k·π/2 + r` with
/// `k = round(2x/π)` (the rounding by adding 1.5·2²³, `k mod 4` from the bits, as in
/// [`exp_f32`](super::norm::exp_f32)), `r` by Cody–Waite reduction with π/2 in three parts
/// (exact products for |x| < 8192, the range of timestep × frequency), then Cephes' minimax
/// polynomials for sin and cos on [−π/4, π/4] and the quadrant's swap and signs. Within
/// 2 × 10⁻⁷ of libm for |x| ≤ 8192 (tested).
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn sin_cos_f32(x: f32) -> (f32, f32) {
    const FRAC_2_PI: f32 = std::f32::consts::FRAC_2_PI;
    const ROUND: f32 = 12_582_912.0;
    // π/2 = P1 + P2 + P3, P1 and P2 with few enough mantissa bits that k·P1, k·P2 are exact.
    const P1: f32 = 1.570_312_5;
    const P2: f32 = 4.837_512_969_970_703e-4;
    const P3: f32 = 7.549_789_954_891_882e-8;
    let t = x * FRAC_2_PI + ROUND;
    let k = t - ROUND;
    let r = ((x - k * P1) - k * P2) - k * P3;
    let q = t.to_bits().wrapping_sub(ROUND.to_bits()) & 3;
    let z = r * r;
    let s = r + r * z * (-1.666_665_461_1e-1 + z * (8.332_160_873_6e-3 + z * -1.951_529_589_1e-4));
    let c = 1.0 - 0.5 * z
        + z * z * (4.166_664_568_298_827e-2 + z * (-1.388_731_625_493_765e-3 + z * 2.443_315_711_809_948e-5));
    let (sv, cv) = if q & 1 == 0 { (s, c) } else { (c, s) };
    let sin = if q & 2 == 0 { sv } else { -sv };
    let cos = if (q + 1) & 2 == 0 { cv } else { -cv };
    (sin, cos)
}

/// The sinusoidal embedding of `ts` (see [`timestep_embedding`](crate::embedding::timestep_embedding)):
/// rows of `[cos(t·f), sin(t·f), (0 for an odd width)]`, `emb` row-major with `dim` columns.
#[inline(always)]
fn embedding_body(emb: &mut [f32], ts: &[f32], freqs: &[f32], dim: usize) {
    let half = freqs.len();
    for (row, &t) in emb.chunks_exact_mut(dim).zip(ts) {
        let (cos, rest) = row.split_at_mut(half);
        let (sin, pad) = rest.split_at_mut(half);
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(freqs) {
            (*s, *c) = sin_cos_f32(t * f);
        }
        pad.fill(0.0);
    }
}

simd_variant!(
    /// See [`embedding_body`].
    fn embedding => embedding_body(emb: &mut [f32], ts: &[f32], freqs: &[f32], dim: usize)
);

/// Sizes: batch, data width, embedding width, hidden width, output width, layers with SiLU
/// after the embedding's (input + hidden).
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    data: usize,
    time: usize,
    hidden: usize,
    out: usize,
    layers: usize,
}

impl Dims {
    /// `(rows, columns)` of every weight, in θ's order: time projection, input, hidden…,
    /// output (each followed by its bias in θ).
    fn weights(&self) -> Vec<(usize, usize)> {
        let mut w = vec![(self.time, self.hidden), (self.data, self.hidden)];
        w.extend((1..self.layers).map(|_| (self.hidden, self.hidden)));
        w.push((self.hidden, self.out));
        w
    }
}

/// The parameters' values, in θ's order.
struct Params<'a> {
    w: Vec<&'a [f32]>,
    b: Vec<&'a [f32]>,
}

/// What the forward pass keeps for the backward pass, whole-batch, row-major: the embedding
/// `[B, time]`, the embedding projection's pre-activation `[B, hidden]`, and per layer its
/// pre-activation `z_l` and output `h_l` (`[B, hidden]` each).
#[derive(Debug)]
struct Saved {
    emb: Vec<f32>,
    ze: Vec<f32>,
    z: Vec<Vec<f32>>,
    h: Vec<Vec<f32>>,
}

/// One row block's buffers (`rows` rows each).
struct Block<'a> {
    emb: &'a mut [f32],
    ze: &'a mut [f32],
    e: &'a mut [f32],
    z: Vec<&'a mut [f32]>,
    h: Vec<&'a mut [f32]>,
}

/// `dst[r, :] = bias (+ add[r, :])` for every row.
fn fill_rows(dst: &mut [f32], bias: &[f32], add: Option<&[f32]>) {
    let n = bias.len();
    match add {
        Some(a) => dst.chunks_exact_mut(n).zip(a.chunks_exact(n)).for_each(|(d, a)| {
            d.iter_mut().zip(a.iter().zip(bias)).for_each(|(d, (&a, &b))| *d = a + b);
        }),
        None => dst.chunks_exact_mut(n).for_each(|d| d.copy_from_slice(bias)),
    }
}

/// The network on `rows` rows: `x: [rows, data]`, `ts: [rows]` → `y: [rows, out]`, every
/// intermediate in `buf`.
#[allow(clippy::too_many_arguments)]
fn forward_block(
    d: &Dims,
    p: &Params<'_>,
    freqs: &[f32],
    x: &[f32],
    ts: &[f32],
    y: &mut [f32],
    buf: Block<'_>,
    par: Parallelism,
) {
    let rows = ts.len();
    let (hd, Block { emb, ze, e, mut z, mut h }) = (d.hidden, buf);
    embedding(emb, ts, freqs, d.time);
    fill_rows(ze, p.b[0], None);
    gemm_into([rows, hd, d.time], ze, hd, true, (emb, 1, d.time), (p.w[0], 1, hd), 1.0, par);
    silu_into(e, ze);
    for l in 0..d.layers {
        let (done, rest) = h.split_at_mut(l);
        let (input, width) = if l == 0 { (x, d.data) } else { (&*done[l - 1], hd) };
        fill_rows(&mut *z[l], p.b[l + 1], Some(e));
        gemm_into([rows, hd, width], &mut *z[l], hd, true, (input, 1, width), (p.w[l + 1], 1, hd), 1.0, par);
        silu_into(&mut *rest[0], &*z[l]);
    }
    let last = d.layers + 1;
    fill_rows(y, p.b[last], None);
    gemm_into([rows, d.out, hd], y, d.out, true, (&*h[d.layers - 1], 1, hd), (p.w[last], 1, d.out), 1.0, par);
}

/// The forward pass over the whole batch; with `keep`, the intermediates for the backward pass.
fn forward(d: &Dims, p: &Params<'_>, x: &[f32], ts: &[f32], keep: bool) -> (Vec<f32>, Option<Saved>) {
    let freqs = crate::embedding::frequencies(d.time, crate::embedding::MAX_PERIOD);
    let (gs, _, par) = plan_chunks(d.batch, 1, BLOCK_ROWS);
    let (hd, lay) = (d.hidden, d.layers);
    let mut y = vec![0f32; d.batch * d.out];
    let blocks = y.par_chunks_mut(gs * d.out).zip(x.par_chunks(gs * d.data)).zip(ts.par_chunks(gs));
    if !keep {
        blocks.for_each(|((y, x), ts)| {
            let rows = ts.len();
            let n = rows * hd;
            with_scratch([rows * d.time + 2 * n, lay * n, lay * n], |a, zs, hs| {
                let (emb, a) = a.split_at_mut(rows * d.time);
                let (ze, e) = a.split_at_mut(n);
                let buf = Block {
                    emb,
                    ze,
                    e,
                    z: zs.chunks_exact_mut(n).collect(),
                    h: hs.chunks_exact_mut(n).collect(),
                };
                forward_block(d, p, &freqs, x, ts, y, buf, par);
            });
        });
        return (y, None);
    }
    let mut s = Saved {
        emb: vec![0f32; d.batch * d.time],
        ze: vec![0f32; d.batch * hd],
        z: (0..lay).map(|_| vec![0f32; d.batch * hd]).collect(),
        h: (0..lay).map(|_| vec![0f32; d.batch * hd]).collect(),
    };
    // Per block, its rows of every saved buffer (z and h per layer).
    type Rows<'a> = Vec<&'a mut [f32]>;
    let mut per_block: Vec<(Rows<'_>, Rows<'_>)> = Vec::new();
    for (zl, hl) in s.z.iter_mut().zip(s.h.iter_mut()) {
        for (i, (zc, hc)) in zl.chunks_mut(gs * hd).zip(hl.chunks_mut(gs * hd)).enumerate() {
            if per_block.len() <= i {
                per_block.push((Vec::new(), Vec::new()));
            }
            per_block[i].0.push(zc);
            per_block[i].1.push(hc);
        }
    }
    blocks
        .zip(s.emb.par_chunks_mut(gs * d.time))
        .zip(s.ze.par_chunks_mut(gs * hd))
        .zip(per_block.into_par_iter())
        .for_each(|(((((y, x), ts), emb), ze), (z, h))| {
            with_scratch([ts.len() * hd, 0, 0], |e, _, _| {
                forward_block(d, p, &freqs, x, ts, y, Block { emb, ze, e, z, h }, par);
            });
        });
    (y, Some(s))
}

#[derive(Debug, Clone)]
struct State {
    dims: Dims,
    x: FlexFloat,
    params: Vec<FlexFloat>,
    saved: Arc<Saved>,
}

#[derive(Debug)]
struct MlpBackward;

impl Backward<Flex, 2> for MlpBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let State { dims: d, x, params, saved } = ops.state;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node)).expect("f32 output gradient");
        let dy = dy.as_slice::<f32>().expect("contiguous f32 gradient");
        let [px, ptheta] = ops.parents;
        fn sl(t: &FlexFloat) -> &[f32] {
            t.as_slice::<f32>().expect("contiguous f32 parameter")
        }
        let w: Vec<&[f32]> = params.iter().step_by(2).map(sl).collect();
        let xs = sl(&x);
        let (hd, lay, b) = (d.hidden, d.layers, d.batch);
        let (gs, _, par) = plan_chunks(b, 1, BLOCK_ROWS);
        // The chain, by row blocks: dz_l = dh_l ⊙ SiLU′(z_l), dh_{l−1} = dz_l·W_lᵀ, de = Σ_l dz_l,
        // dz_e = de ⊙ SiLU′(z_e).
        let mut dz: Vec<Vec<f32>> = (0..lay).map(|_| vec![0f32; b * hd]).collect();
        let mut dze = vec![0f32; b * hd];
        let mut dx = vec![0f32; if px.is_some() { b * d.data } else { 0 }];
        let mut per_block: Vec<Vec<&mut [f32]>> = Vec::new();
        for dzl in dz.iter_mut() {
            for (i, c) in dzl.chunks_mut(gs * hd).enumerate() {
                if per_block.len() <= i {
                    per_block.push(Vec::new());
                }
                per_block[i].push(c);
            }
        }
        let dx_chunks: Vec<&mut [f32]> = if dx.is_empty() {
            (0..per_block.len()).map(|_| <&mut [f32]>::default()).collect()
        } else {
            dx.chunks_mut(gs * d.data).collect()
        };
        per_block
            .into_par_iter()
            .zip(dze.par_chunks_mut(gs * hd))
            .zip(dx_chunks.into_par_iter())
            .enumerate()
            .for_each(|(i, ((mut dzb, dzeb), dxb))| {
                let rows = dzeb.len() / hd;
                let r0 = i * gs;
                let n = rows * hd;
                with_scratch([n, n, 0], |dh, de, _| {
                    let dyb = &dy[r0 * d.out..][..rows * d.out];
                    gemm_into(
                        [rows, hd, d.out],
                        dh,
                        hd,
                        false,
                        (dyb, 1, d.out),
                        (w[lay + 1], d.out, 1),
                        1.0,
                        par,
                    );
                    de.fill(0.0);
                    for l in (0..lay).rev() {
                        let dzl = &mut *dzb[l];
                        dzl.copy_from_slice(dh);
                        silu_grad(dzl, &saved.z[l][r0 * hd..][..n]);
                        de.iter_mut().zip(dzl.iter()).for_each(|(a, &v)| *a += v);
                        if l > 0 {
                            gemm_into(
                                [rows, hd, hd],
                                dh,
                                hd,
                                false,
                                (dzl, 1, hd),
                                (w[l + 1], hd, 1),
                                1.0,
                                par,
                            );
                        } else if !dxb.is_empty() {
                            gemm_into(
                                [rows, d.data, hd],
                                dxb,
                                d.data,
                                false,
                                (dzl, 1, hd),
                                (w[1], hd, 1),
                                1.0,
                                par,
                            );
                        }
                    }
                    dzeb.copy_from_slice(de);
                    silu_grad(dzeb, &saved.ze[r0 * hd..][..n]);
                });
            });
        if let Some(node) = px {
            grads.register::<Flex>(node.id, flex_from(dx, vec![b, d.data]));
        }
        let Some(node) = ptheta else { return };
        // The parameter gradients, each a GEMM over the whole batch (k = B), in parallel:
        // dW = inputᵀ·dz and db = Σ_rows dz, with (input, dz) per weight in θ's order.
        let shapes = d.weights();
        let mut jobs: Vec<(&[f32], usize, &[f32])> =
            vec![(saved.emb.as_slice(), d.time, dze.as_slice()), (xs, d.data, dz[0].as_slice())];
        for (h, g) in saved.h.iter().zip(&dz[1..]) {
            jobs.push((h.as_slice(), hd, g.as_slice()));
        }
        jobs.push((saved.h[lay - 1].as_slice(), hd, dy));
        let total: usize = shapes.iter().map(|&(r, c)| r * c + c).sum();
        let mut theta = vec![0f32; total];
        let mut slots: Vec<&mut [f32]> = Vec::new();
        let mut rest = &mut theta[..];
        for &(r, c) in &shapes {
            let (wg, tail) = rest.split_at_mut(r * c + c);
            slots.push(wg);
            rest = tail;
        }
        slots.into_par_iter().zip(jobs).zip(shapes.par_iter()).for_each(
            |((slot, (input, width, g)), &(r, c))| {
                let (dw, db) = slot.split_at_mut(r * c);
                debug_assert_eq!(width, r);
                gemm_into([r, c, b], dw, c, false, (input, width, 1), (g, 1, c), 1.0, Parallelism::None);
                db.copy_from_slice(&column_sums(g, c));
            },
        );
        grads.register::<Flex>(node.id, flex_from(theta, vec![total]));
    }
}

/// The MLP on the CPU device, plain or autodiff; `None` elsewhere, for a layer without bias or
/// mismatched shapes. `layers`: (weight `[in, out]`, bias) of the time projection, the input
/// layer, the hidden layers and the output layer, in that order.
pub fn mlp(
    x: &Tensor<2>,
    ts: &Tensor<1>,
    time: usize,
    layers: &[(Tensor<2>, Tensor<1>)],
) -> Option<Tensor<2>> {
    let [batch, data] = x.dims();
    if layers.len() < 3 || ts.dims() != [batch] || batch == 0 {
        return None;
    }
    let hidden = layers[0].0.dims()[1];
    let d = Dims {
        batch,
        data,
        time,
        hidden,
        out: layers[layers.len() - 1].0.dims()[1],
        layers: layers.len() - 2,
    };
    if d.weights()
        .iter()
        .zip(layers)
        .any(|(&shape, (w, b))| w.dims() != [shape.0, shape.1] || b.dims() != [shape.1])
        || [d.data, d.time, d.hidden, d.out].contains(&0)
    {
        return None;
    }
    let plain = |t: Tensor<2>| t.try_into_primitive::<Flex>().ok().and_then(contiguous_f32);
    if let Some(xp) = plain(x.clone()) {
        let tp = contiguous_f32(ts.clone().try_into_primitive::<Flex>().ok()?)?;
        let mut prims = Vec::with_capacity(2 * layers.len());
        for (w, b) in layers {
            prims.push(plain(w.clone())?);
            prims.push(contiguous_f32(b.clone().try_into_primitive::<Flex>().ok()?)?);
        }
        let p = params(&prims)?;
        let (y, _) = forward(&d, &p, xp.as_slice::<f32>()?, tp.as_slice::<f32>()?, false);
        return Some(Tensor::from_primitive::<Flex>(flex_from(y, vec![batch, d.out])));
    }
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let tp = contiguous_f32(ts.clone().try_into_primitive::<Ad>().ok()?.primitive().clone())?;
    let mut prims = Vec::with_capacity(2 * layers.len());
    let mut parts: Vec<Tensor<1>> = Vec::with_capacity(2 * layers.len());
    for (w, b) in layers {
        prims.push(contiguous_f32(w.clone().try_into_primitive::<Ad>().ok()?.primitive().clone())?);
        prims.push(contiguous_f32(b.clone().try_into_primitive::<Ad>().ok()?.primitive().clone())?);
        parts.push(w.clone().reshape([w.dims()[0] * w.dims()[1]]));
        parts.push(b.clone());
    }
    // θ: one graph node over every parameter (burn's cat; its backward slices our gradient).
    let theta = Tensor::cat(parts, 0).try_into_primitive::<Ad>().ok()?;
    let xp = contiguous_f32(xa.primitive().clone())?;
    let p = params(&prims)?;
    let prep = MlpBackward.prepare::<NoCheckpointing>([xa.node(), theta.node()]).compute_bound().stateful();
    let keep = matches!(prep, OpsKind::Tracked(_));
    let (y, saved) = forward(&d, &p, xp.as_slice::<f32>()?, tp.as_slice::<f32>()?, keep);
    let out = flex_from(y, vec![batch, d.out]);
    let result = match prep {
        OpsKind::Tracked(prep) => {
            let state = State { dims: d, x: xp.clone(), params: prims.clone(), saved: Arc::new(saved?) };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(result))
}

/// The slices of `prims` (weight, bias, weight, bias, …).
fn params(prims: &[FlexFloat]) -> Option<Params<'_>> {
    let mut p = Params { w: Vec::new(), b: Vec::new() };
    for pair in prims.chunks_exact(2) {
        p.w.push(pair[0].as_slice::<f32>()?);
        p.b.push(pair[1].as_slice::<f32>()?);
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::sin_cos_f32;

    /// Against libm over the range the embedding uses (timestep × frequency ≤ 8192), negative
    /// arguments and the quadrant boundaries included.
    #[test]
    fn sin_cos_matches_libm() {
        let mut worst = 0f32;
        let mut x = -8192f32;
        while x <= 8192.0 {
            for dx in [0.0, 0.123_456, std::f32::consts::FRAC_PI_2, std::f32::consts::FRAC_PI_4] {
                let v = x + dx;
                let (s, c) = sin_cos_f32(v);
                worst = worst.max((s - v.sin()).abs()).max((c - v.cos()).abs());
            }
            x += 0.377;
        }
        assert!(worst < 2e-7, "worst error {worst}");
    }
}
