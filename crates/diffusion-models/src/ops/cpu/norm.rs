//! One pass per (sample, group) over contiguous memory: statistics in f64, then normalise,
//! affine, scale-shift and SiLU while writing the output. On the autodiff CPU device the op
//! is one node of the graph with its own backward, which recomputes the normalised values from
//! x and the saved statistics and writes dx in two passes over each group (no buffers).
//! Inputs are held by handle (no copies); SiLU uses [`exp_f32`], which vectorises.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{Ad, FlexFloat, LANES, contiguous_f32, flex_from, sum_by};

/// `eˣ` in f32 without a library call, so that loops over it vectorise: 2ⁿ·p(r) with
/// `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2` and a degree-6 Taylor polynomial (relative error
/// ≈ 1.2e-7, i.e. about one ulp); `x` is clamped to `[−87.3, 88]`, where the result neither
/// underflows to a denormal nor overflows.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2²³: adding it rounds x·log₂e to an integer n held in the low mantissa bits, so n and
    // 2ⁿ come from integer arithmetic on the bits (no float → int conversion, which would not
    // vectorise).
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// `1 / (1 + e⁻ᶻ)`.
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-z))
}

/// `dst = SiLU(a·src + b)`.
#[inline(always)]
fn affine_silu(dst: &mut [f32], src: &[f32], a: f32, b: f32) {
    for (d, &v) in dst.iter_mut().zip(src) {
        let z = v * a + b;
        *d = z * sigmoid(z);
    }
}

/// `dz = dy·SiLU′(z)` with `z = ((x − mean)·rstd)·ga + ba`, `[mean, rstd, ga, ba] = c`.
#[inline(always)]
fn silu_grad(dz: &mut [f32], xs: &[f32], dys: &[f32], [mean, rstd, ga, ba]: [f32; 4]) {
    for ((d, &xv), &dyv) in dz.iter_mut().zip(xs).zip(dys) {
        let z = ((xv - mean) * rstd) * ga + ba;
        let sg = sigmoid(z);
        *d = dyv * sg * (1.0 + z * (1.0 - sg));
    }
}

super::simd_variant!(
    /// See [`affine_silu`].
    fn affine_silu_simd => affine_silu(dst: &mut [f32], src: &[f32], a: f32, b: f32)
);
super::simd_variant!(
    /// See [`silu_grad`].
    fn silu_grad_simd => silu_grad(dz: &mut [f32], xs: &[f32], dys: &[f32], c: [f32; 4])
);

/// Everything the kernels need, held by handle (contiguous f32 primitives).
#[derive(Debug, Clone)]
struct Inputs {
    x: FlexFloat,
    /// `[C]` each; `None`: γ = 1, β = 0.
    gamma: Option<FlexFloat>,
    beta: Option<FlexFloat>,
    /// `[B, C]` each, or `None`.
    scale: Option<FlexFloat>,
    shift: Option<FlexFloat>,
    dims: [usize; 4],
    groups: usize,
    eps: f64,
    silu: bool,
}

fn sl(t: &FlexFloat) -> &[f32] {
    t.as_slice::<f32>().expect("inputs are contiguous f32 by construction")
}

impl Inputs {
    fn x(&self) -> &[f32] {
        sl(&self.x)
    }

    /// γ, β, scale and shift of channel `ch` of sample `n`.
    fn params(&self, n: usize, ch: usize) -> (f32, f32, f32, f32) {
        let c = self.dims[1];
        (
            self.gamma.as_ref().map_or(1.0, |g| sl(g)[ch]),
            self.beta.as_ref().map_or(0.0, |b| sl(b)[ch]),
            self.scale.as_ref().map_or(0.0, |s| sl(s)[n * c + ch]),
            self.shift.as_ref().map_or(0.0, |t| sl(t)[n * c + ch]),
        )
    }
}

/// Per (sample, group): mean and 1/σ.
fn stats(i: &Inputs) -> Vec<(f64, f64)> {
    let [_, c, h, w] = i.dims;
    let len = c / i.groups * h * w;
    i.x()
        .par_chunks(len)
        .map(|xg| {
            let (mut s, mut q) = ([0f64; LANES], [0f64; LANES]);
            let mut chunks = xg.chunks_exact(LANES);
            for ch in &mut chunks {
                for ((s, q), &v) in s.iter_mut().zip(&mut q).zip(ch) {
                    let v = f64::from(v);
                    *s += v;
                    *q += v * v;
                }
            }
            let (mut sum, mut sq): (f64, f64) = (s.iter().sum(), q.iter().sum());
            for &v in chunks.remainder() {
                let v = f64::from(v);
                sum += v;
                sq += v * v;
            }
            let mean = sum / len as f64;
            let var = (sq / len as f64 - mean * mean).max(0.0);
            (mean, 1.0 / (var + i.eps).sqrt())
        })
        .collect()
}

/// Per (sample, channel): the pre-activation is z = a·x + b.
fn coefficients(i: &Inputs, st: &[(f64, f64)], n: usize, ch: usize) -> (f32, f32) {
    let c = i.dims[1];
    let (mean, rstd) = st[n * i.groups + ch / (c / i.groups)];
    let (g, b, s, t) = i.params(n, ch);
    let (g, b, s, t) = (f64::from(g), f64::from(b), f64::from(s), f64::from(t));
    let (a, b) = (rstd * g, b - mean * rstd * g);
    ((a * (1.0 + s)) as f32, (b * (1.0 + s) + t) as f32)
}

fn forward(i: &Inputs, st: &[(f64, f64)]) -> Vec<f32> {
    let [_, c, h, w] = i.dims;
    let hw = h * w;
    let mut out = vec![0f32; i.x().len()];
    out.par_chunks_mut(hw).zip(i.x().par_chunks(hw)).enumerate().for_each(|(k, (dst, src))| {
        let (a, b) = coefficients(i, st, k / c, k % c);
        if i.silu {
            affine_silu_simd(dst, src, a, b);
        } else {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v * a + b;
            }
        }
    });
    out
}

/// Gradients of x, γ, β, scale and shift given dL/dy.
#[allow(clippy::type_complexity)]
fn backward(i: &Inputs, st: &[(f64, f64)], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let [b, c, h, w] = i.dims;
    let (hw, cg) = (h * w, c / i.groups);
    let x = i.x();
    let mut dx = vec![0f32; x.len()];
    // Per (sample, group), in parallel, over its contiguous block of dx: first dx̂ (written into
    // dx) with the per-channel sums [Σ dz·x̂·(1+s), Σ dz·(1+s), Σ dz·a, Σ dz], then dx in place.
    let sums: Vec<Vec<[f64; 4]>> = dx
        .par_chunks_mut(cg * hw)
        .enumerate()
        .map(|(k, dxg)| {
            let (n, g) = (k / i.groups, k % i.groups);
            let (mean, rstd) = st[k];
            let (meanf, rstdf) = (mean as f32, rstd as f32);
            let mut sums = vec![[0f64; 4]; cg];
            let (mut sum_d, mut sum_dx) = (0f64, 0f64);
            // Pass 1 per channel (vectorised): dz into dx, then Σ dz and Σ dz·x̂. With
            // a = γ·x̂ + β and dx̂ = γ(1 + s)·dz every other sum follows from these two.
            for (ci, dxc) in dxg.chunks_exact_mut(hw).enumerate() {
                let ch = g * cg + ci;
                let base = (n * c + ch) * hw;
                let (gam, bet, s, t) = i.params(n, ch);
                let (xs, dys) = (&x[base..base + hw], &dy[base..base + hw]);
                if i.silu {
                    let (ga, ba) = (gam * (1.0 + s), bet * (1.0 + s) + t);
                    let c = [meanf, rstdf, ga, ba];
                    silu_grad_simd(dxc, xs, dys, c);
                } else {
                    dxc.copy_from_slice(dys);
                }
                let dz: &[f32] = dxc;
                let s_dz = f64::from(sum_by(hw, |p| dz[p]));
                let s_dz_xh = f64::from(sum_by(hw, |p| dz[p] * ((xs[p] - meanf) * rstdf)));
                let (g64, b64, s1) = (f64::from(gam), f64::from(bet), 1.0 + f64::from(s));
                // [dγ, dβ, dscale, dshift] contributions of this (n, ch): Σ da·x̂, Σ da,
                // Σ dz·a, Σ dz, with da = (1 + s)·dz.
                sums[ci] = [s1 * s_dz_xh, s1 * s_dz, g64 * s_dz_xh + b64 * s_dz, s_dz];
                sum_d += s1 * g64 * s_dz;
                sum_dx += s1 * g64 * s_dz_xh;
            }
            let m = (cg * hw) as f64;
            let (mean_d, mean_dx) = ((sum_d / m) as f32, (sum_dx / m) as f32);
            // Pass 2 (vectorised): dx = (1/σ)(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)).
            for (ci, dxc) in dxg.chunks_exact_mut(hw).enumerate() {
                let ch = g * cg + ci;
                let (gam, _, s, _) = i.params(n, ch);
                let f = gam * (1.0 + s);
                let xs = &x[(n * c + ch) * hw..][..hw];
                for (d, &xv) in dxc.iter_mut().zip(xs) {
                    let xh = (xv - meanf) * rstdf;
                    *d = rstdf * (*d * f - mean_d - xh * mean_dx);
                }
            }
            sums
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0f64; c], vec![0f64; c]);
    let (mut dscale, mut dshift) = (vec![0f32; b * c], vec![0f32; b * c]);
    for (k, group) in sums.into_iter().enumerate() {
        let (n, g) = (k / i.groups, k % i.groups);
        for (ci, [sg, sb, ss, st]) in group.into_iter().enumerate() {
            let ch = g * cg + ci;
            dgamma[ch] += sg;
            dbeta[ch] += sb;
            dscale[n * c + ch] = ss as f32;
            dshift[n * c + ch] = st as f32;
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    (dx, f(dgamma), f(dbeta), dscale, dshift)
}

/// The primitive of a plain CPU tensor as a contiguous f32 handle.
fn plain<const D: usize>(t: Tensor<D>) -> Option<FlexFloat> {
    contiguous_f32(t.try_into_primitive::<Flex>().ok()?)
}

/// The fused result on the CPU device, plain or autodiff.
pub fn fused(
    norm: &GroupNorm,
    x: &Tensor<4>,
    scale_shift: Option<&(Tensor<4>, Tensor<4>)>,
    apply_silu: bool,
) -> Option<Tensor<4>> {
    let [b, c, h, w] = x.dims();
    let g = norm.num_groups;
    if g == 0 || !c.is_multiple_of(g) {
        return None;
    }
    let Some(xp) = plain(x.clone()) else {
        return fused_autodiff(norm, x, scale_shift, apply_silu);
    };
    let inputs = Inputs {
        x: xp,
        gamma: match &norm.gamma {
            Some(p) => Some(plain(p.val())?),
            None => None,
        },
        beta: match &norm.beta {
            Some(p) => Some(plain(p.val())?),
            None => None,
        },
        scale: match scale_shift {
            Some((s, _)) => Some(plain(s.clone())?),
            None => None,
        },
        shift: match scale_shift {
            Some((_, t)) => Some(plain(t.clone())?),
            None => None,
        },
        dims: [b, c, h, w],
        groups: g,
        eps: norm.epsilon,
        silu: apply_silu,
    };
    let st = stats(&inputs);
    let out = forward(&inputs, &st);
    Some(Tensor::from_primitive::<Flex>(flex_from(out, vec![b, c, h, w])))
}

#[derive(Debug)]
struct FusedBackward;

impl Backward<Flex, 5> for FusedBackward {
    type State = (Inputs, Arc<Vec<(f64, f64)>>);

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (inputs, st) = ops.state;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node)).expect("f32 output gradient");
        let (dx, dgamma, dbeta, dscale, dshift) = backward(&inputs, &st, sl(&dy));
        let [b, c, h, w] = inputs.dims;
        let [px, pg, pb, ps, pt] = ops.parents;
        if let Some(node) = px {
            grads.register::<Flex>(node.id, flex_from(dx, vec![b, c, h, w]));
        }
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex_from(dgamma, vec![c]));
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, flex_from(dbeta, vec![c]));
        }
        if let Some(node) = ps {
            grads.register::<Flex>(node.id, flex_from(dscale, vec![b, c, 1, 1]));
        }
        if let Some(node) = pt {
            grads.register::<Flex>(node.id, flex_from(dshift, vec![b, c, 1, 1]));
        }
    }
}

/// The fused op as one autodiff node on the CPU backend (no gradient checkpointing).
fn fused_autodiff(
    norm: &GroupNorm,
    x: &Tensor<4>,
    scale_shift: Option<&(Tensor<4>, Tensor<4>)>,
    apply_silu: bool,
) -> Option<Tensor<4>> {
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let [b, c, h, w] = x.dims();
    let g = norm.num_groups;
    let device = x.device();
    let gamma = norm.gamma.as_ref()?.val().try_into_primitive::<Ad>().ok()?;
    let beta = norm.beta.as_ref()?.val().try_into_primitive::<Ad>().ok()?;
    let (s, t) = match scale_shift {
        Some((s, t)) => (s.clone(), t.clone()),
        None => (Tensor::<4>::zeros([b, c, 1, 1], &device), Tensor::<4>::zeros([b, c, 1, 1], &device)),
    };
    let (s, t) = (s.try_into_primitive::<Ad>().ok()?, t.try_into_primitive::<Ad>().ok()?);
    let inputs = Inputs {
        x: contiguous_f32(xa.primitive().clone())?,
        gamma: Some(contiguous_f32(gamma.primitive().clone())?),
        beta: Some(contiguous_f32(beta.primitive().clone())?),
        scale: match scale_shift {
            Some(_) => Some(contiguous_f32(s.primitive().clone())?),
            None => None,
        },
        shift: match scale_shift {
            Some(_) => Some(contiguous_f32(t.primitive().clone())?),
            None => None,
        },
        dims: [b, c, h, w],
        groups: g,
        eps: norm.epsilon,
        silu: apply_silu,
    };
    let st = Arc::new(stats(&inputs));
    let out = flex_from(forward(&inputs, &st), vec![b, c, h, w]);
    let result = match FusedBackward
        .prepare::<NoCheckpointing>([xa.node(), gamma.node(), beta.node(), s.node(), t.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((inputs, st), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(result))
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    /// Against the C library's `exp` in f64 over the range SiLU and softmax use, and at the
    /// clamps: relative error at most 3e-7 (a few ulp of f32).
    #[test]
    fn exp_f32_matches_libm() {
        let mut worst = 0f64;
        for k in -87_000..=87_000 {
            let x = k as f32 * 1e-3;
            let want = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp_f32(-1e4) > 0.0 && exp_f32(-1e4) < 1e-37, "underflow side clamps to a tiny normal");
        assert!(exp_f32(1e4).is_finite() && exp_f32(1e4) > 1e38, "overflow side clamps to a large finite");
        assert_eq!(exp_f32(0.0), 1.0);
    }
}
