//! ADM's QKV attention as one op: per (sample, head) the scores `S = s²·qᵀk` (`s = ch^{-1/4}`),
//! a row softmax `P`, and `a = v·Pᵀ`, with `S` and `P` in a per-thread scratch buffer — the
//! `[B·H, L, L]` score tensor is never materialised. The forward pass keeps only each row's
//! log-sum-exp; the backward pass recomputes `P` from it and forms `dv = da·P`,
//! `dS = P ⊙ (dP − rowsum(P ⊙ dP))` with `dP = daᵀ·v`, `dq = s²·k·dSᵀ`, `dk = s²·q·dS`.
//! Both head orders read q, k and v of a head as contiguous `[ch, L]` blocks of the packed input.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::gemm_into;
use super::norm::exp_f32;
use super::{Ad, FlexFloat, LANES, contiguous_f32, flex_from, max_lanes, simd_variant, sum_by, with_scratch};
use crate::blocks::AttentionOrder;

/// Shapes of one call.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    heads: usize,
    /// Channels per head.
    ch: usize,
    /// Sequence length L.
    len: usize,
    order: AttentionOrder,
}

impl Geometry {
    fn width(&self) -> usize {
        3 * self.heads * self.ch
    }

    /// Offsets of q, k and v of head `h` inside one sample's `[3·H·ch, L]` block.
    fn offsets(&self, h: usize) -> [usize; 3] {
        let block = self.ch * self.len;
        match self.order {
            AttentionOrder::Legacy => [0, 1, 2].map(|j| (3 * h + j) * block),
            AttentionOrder::New => [0, 1, 2].map(|j| (j * self.heads + h) * block),
        }
    }

    /// `s²`: q and k are each scaled by `ch^{-1/4}`.
    fn scale2(&self) -> f32 {
        (1.0 / (self.ch as f64).sqrt()) as f32
    }
}

const SEQ: Parallelism = Parallelism::None;

/// Row softmax of `p` (`[L, L]`) in place but not normalised: `P̃ = exp(S − max)`, computed and
/// summed in one pass; each row's `1 / Σ` into `inv` (the caller scales the product `v·P̃ᵀ`
/// instead: `ch × L` multiplications, not `L × L`) and its log-sum-exp into `lse`.
#[inline(always)]
fn softmax_rows(p: &mut [f32], lse: &mut [f32], inv: &mut [f32], l: usize) {
    for ((row, lse), inv) in p.chunks_exact_mut(l).zip(lse).zip(inv) {
        let m = max_lanes(row);
        let mut acc = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *v = exp_f32(*v - m);
                *a += *v;
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp_f32(*v - m);
            sum += *v;
        }
        *inv = 1.0 / sum;
        *lse = m + sum.ln();
    }
}

/// `P = exp(S − lse)` row by row, in place.
#[inline(always)]
fn exp_rows(p: &mut [f32], lse: &[f32], l: usize) {
    for (row, &m) in p.chunks_exact_mut(l).zip(lse) {
        for v in row.iter_mut() {
            *v = exp_f32(*v - m);
        }
    }
}

/// `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, in place in `dp`.
#[inline(always)]
fn softmax_grad_rows(dp: &mut [f32], p: &[f32], l: usize) {
    for (drow, prow) in dp.chunks_exact_mut(l).zip(p.chunks_exact(l)) {
        let dot = sum_by(l, |i| drow[i] * prow[i]);
        for (d, &pv) in drow.iter_mut().zip(prow) {
            *d = pv * (*d - dot);
        }
    }
}

simd_variant!(
    /// See [`softmax_rows`].
    fn softmax_rows_simd => softmax_rows(p: &mut [f32], lse: &mut [f32], inv: &mut [f32], l: usize)
);
simd_variant!(
    /// See [`exp_rows`].
    fn exp_rows_simd => exp_rows(p: &mut [f32], lse: &[f32], l: usize)
);
simd_variant!(
    /// See [`softmax_grad_rows`].
    fn softmax_grad_rows_simd => softmax_grad_rows(dp: &mut [f32], p: &[f32], l: usize)
);

/// `S = s²·qᵀk` into `p` (`[L, L]`, row t, column s).
fn scores(g: &Geometry, q: &[f32], k: &[f32], p: &mut [f32]) {
    let l = g.len;
    gemm_into([l, l, g.ch], p, l, false, (q, l, 1), (k, 1, l), g.scale2(), SEQ);
}

/// The forward pass: the output `[B, H·ch, L]` and each row's log-sum-exp `[B, H, L]`.
fn forward(g: &Geometry, qkv: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (l, ch, heads) = (g.len, g.ch, g.heads);
    let mut out = vec![0f32; g.batch * heads * ch * l];
    let mut lse = vec![0f32; g.batch * heads * l];
    out.par_chunks_mut(heads * ch * l)
        .zip(lse.par_chunks_mut(heads * l))
        .zip(qkv.par_chunks(g.width() * l))
        .for_each(|((out, lse), x)| {
            with_scratch([l * l, l, 0], |p, inv, _| {
                for h in 0..heads {
                    let [oq, ok, ov] = g.offsets(h);
                    let (q, k, v) = (&x[oq..oq + ch * l], &x[ok..ok + ch * l], &x[ov..ov + ch * l]);
                    scores(g, q, k, p);
                    let lse = &mut lse[h * l..(h + 1) * l];
                    softmax_rows_simd(p, lse, inv, l);
                    // a[c, t] = Σ_s v[c, s] P[t, s] = (Σ_s v[c, s] P̃[t, s]) / Σ_s P̃[t, s].
                    let a = &mut out[h * ch * l..(h + 1) * ch * l];
                    gemm_into([ch, l, l], a, l, false, (v, 1, l), (p, l, 1), 1.0, SEQ);
                    for row in a.chunks_exact_mut(l) {
                        row.iter_mut().zip(inv.iter()).for_each(|(a, &s)| *a *= s);
                    }
                }
            });
        });
    (out, lse)
}

/// The gradient of the packed `qkv` given `da` (`[B, H·ch, L]`).
fn backward(g: &Geometry, qkv: &[f32], lse: &[f32], da: &[f32]) -> Vec<f32> {
    let (l, ch, heads) = (g.len, g.ch, g.heads);
    let mut dqkv = vec![0f32; qkv.len()];
    dqkv.par_chunks_mut(g.width() * l)
        .zip(qkv.par_chunks(g.width() * l))
        .zip(da.par_chunks(heads * ch * l).zip(lse.par_chunks(heads * l)))
        .for_each(|((dx, x), (da, lse))| {
            with_scratch([l * l, l * l, 0], |p, dp, _| {
                for h in 0..heads {
                    let [oq, ok, ov] = g.offsets(h);
                    let (q, k, v) = (&x[oq..oq + ch * l], &x[ok..ok + ch * l], &x[ov..ov + ch * l]);
                    let da = &da[h * ch * l..(h + 1) * ch * l];
                    // P from the saved log-sum-exp.
                    scores(g, q, k, p);
                    let lse = &lse[h * l..(h + 1) * l];
                    exp_rows_simd(p, lse, l);
                    // dv[c, s] = Σ_t da[c, t] P[t, s].
                    gemm_into(
                        [ch, l, l],
                        &mut dx[ov..ov + ch * l],
                        l,
                        false,
                        (da, 1, l),
                        (p, 1, l),
                        1.0,
                        SEQ,
                    );
                    // dP[t, s] = Σ_c da[c, t] v[c, s]; then dS = P ⊙ (dP − rowsum(P ⊙ dP)) in dp.
                    gemm_into([l, l, ch], dp, l, false, (da, l, 1), (v, 1, l), 1.0, SEQ);
                    softmax_grad_rows_simd(dp, p, l);
                    // dq[c, t] = s² Σ_s k[c, s] dS[t, s]; dk[c, s] = s² Σ_t q[c, t] dS[t, s].
                    gemm_into(
                        [ch, l, l],
                        &mut dx[oq..oq + ch * l],
                        l,
                        false,
                        (k, 1, l),
                        (dp, l, 1),
                        g.scale2(),
                        SEQ,
                    );
                    gemm_into(
                        [ch, l, l],
                        &mut dx[ok..ok + ch * l],
                        l,
                        false,
                        (q, 1, l),
                        (dp, 1, l),
                        g.scale2(),
                        SEQ,
                    );
                }
            });
        });
    dqkv
}

#[derive(Debug, Clone)]
struct AttentionState {
    qkv: FlexFloat,
    lse: std::sync::Arc<Vec<f32>>,
    geometry: Geometry,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let AttentionState { qkv, lse, geometry: g } = ops.state;
        let da = contiguous_f32(grads.consume::<Flex>(&ops.node)).expect("f32 output gradient");
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let dqkv = backward(
                &g,
                qkv.as_slice::<f32>().expect("contiguous f32 input"),
                &lse,
                da.as_slice::<f32>().expect("contiguous f32 output gradient"),
            );
            grads.register::<Flex>(node.id, flex_from(dqkv, vec![g.batch, g.width(), g.len]));
        }
    }
}

/// The op on the CPU device, plain or autodiff; `None` elsewhere.
pub fn qkv_attention(qkv: &Tensor<3>, heads: usize, order: AttentionOrder) -> Option<Tensor<3>> {
    let [batch, width, len] = qkv.dims();
    if heads == 0 || !width.is_multiple_of(3 * heads) || batch == 0 || len == 0 || width == 0 {
        return None;
    }
    let g = Geometry { batch, heads, ch: width / (3 * heads), len, order };
    let shape = vec![batch, heads * g.ch, len];
    if let Ok(p) = qkv.clone().try_into_primitive::<Flex>() {
        let p = contiguous_f32(p)?;
        let (out, _) = forward(&g, p.as_slice::<f32>()?);
        return Some(Tensor::from_primitive::<Flex>(flex_from(out, shape)));
    }
    let a = qkv.clone().try_into_primitive::<Ad>().ok()?;
    let p = contiguous_f32(a.primitive().clone())?;
    let (out, lse) = forward(&g, p.as_slice::<f32>()?);
    let out = flex_from(out, shape);
    let result = match AttentionBackward.prepare::<NoCheckpointing>([a.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            prep.finish(AttentionState { qkv: p, lse: std::sync::Arc::new(lse), geometry: g }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(result))
}
