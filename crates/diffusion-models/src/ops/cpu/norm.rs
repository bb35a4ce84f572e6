//! One pass per (sample, group) over contiguous memory: statistics in f64, then normalise,
//! affine, scale-shift and SiLU while writing the output. On the autodiff CPU device the op
//! is one node of the graph with its own backward (recomputing the normalised values from x
//! and the saved statistics).

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::GroupNorm;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{Ad, FlexFloat, flex_vec, is_plain};

fn host(t: Tensor<4>) -> Option<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().ok()
}

fn host1(t: Tensor<1>) -> Option<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().ok()
}

/// Everything the kernels need, on the host.
#[derive(Debug, Clone)]
struct Inputs {
    x: Arc<Vec<f32>>,
    gamma: Arc<Vec<f32>>,
    beta: Arc<Vec<f32>>,
    /// `[B, C]` each, or `None`.
    scale: Option<Arc<Vec<f32>>>,
    shift: Option<Arc<Vec<f32>>>,
    dims: [usize; 4],
    groups: usize,
    eps: f64,
    silu: bool,
}

/// Per (sample, group): mean and 1/σ.
fn stats(i: &Inputs) -> Vec<(f64, f64)> {
    let [_, c, h, w] = i.dims;
    let len = c / i.groups * h * w;
    i.x.par_chunks(len)
        .map(|xg| {
            let (mut sum, mut sq) = (0f64, 0f64);
            for &v in xg {
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
    let g = f64::from(i.gamma[ch]);
    let (mut a, mut b) = (rstd * g, f64::from(i.beta[ch]) - mean * rstd * g);
    if let (Some(s), Some(t)) = (&i.scale, &i.shift) {
        let (s, t) = (f64::from(s[n * c + ch]), f64::from(t[n * c + ch]));
        a *= 1.0 + s;
        b = b * (1.0 + s) + t;
    }
    (a as f32, b as f32)
}

fn forward(i: &Inputs, st: &[(f64, f64)]) -> Vec<f32> {
    let [_, c, h, w] = i.dims;
    let hw = h * w;
    let mut out = vec![0f32; i.x.len()];
    out.par_chunks_mut(hw).zip(i.x.par_chunks(hw)).enumerate().for_each(|(k, (dst, src))| {
        let (a, b) = coefficients(i, st, k / c, k % c);
        if i.silu {
            for (d, &v) in dst.iter_mut().zip(src) {
                let z = v * a + b;
                *d = z / (1.0 + (-z).exp());
            }
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
    // Per (sample, group), in parallel: dx, and per channel Σ dz, Σ dz·x̂ (for γ, β, scale, shift).
    let per_group: Vec<(Vec<f32>, Vec<[f64; 4]>)> = (0..b * i.groups)
        .into_par_iter()
        .map(|k| {
            let (n, g) = (k / i.groups, k % i.groups);
            let (mean, rstd) = st[k];
            let mut dxhat = vec![0f64; cg * hw];
            let mut xhat = vec![0f64; cg * hw];
            let mut sums = vec![[0f64; 4]; cg];
            for ci in 0..cg {
                let ch = g * cg + ci;
                let base = (n * c + ch) * hw;
                let gam = f64::from(i.gamma[ch]);
                let bet = f64::from(i.beta[ch]);
                let s = i.scale.as_ref().map(|v| f64::from(v[n * c + ch])).unwrap_or(0.0);
                let t = i.shift.as_ref().map(|v| f64::from(v[n * c + ch])).unwrap_or(0.0);
                let (mut s_dz, mut s_dz_xhat, mut s_dz_a) = (0f64, 0f64, 0f64);
                for p in 0..hw {
                    let xh = (f64::from(i.x[base + p]) - mean) * rstd;
                    let a = xh * gam + bet;
                    let z = a * (1.0 + s) + t;
                    let dyv = f64::from(dy[base + p]);
                    let dz = if i.silu {
                        let sg = 1.0 / (1.0 + (-z).exp());
                        dyv * (sg + z * sg * (1.0 - sg))
                    } else {
                        dyv
                    };
                    // dL/da = dz·(1 + s); dL/ds = Σ dz·a; dL/dt = Σ dz.
                    let da = dz * (1.0 + s);
                    s_dz += dz;
                    s_dz_a += dz * a;
                    s_dz_xhat += da * xh;
                    dxhat[ci * hw + p] = da * gam;
                    xhat[ci * hw + p] = xh;
                }
                // [dγ, dβ, dscale, dshift] contributions of this (n, ch).
                let s_da = s_dz * (1.0 + s);
                sums[ci] = [s_dz_xhat, s_da, s_dz_a, s_dz];
            }
            let m = (cg * hw) as f64;
            let mean_d: f64 = dxhat.iter().sum::<f64>() / m;
            let mean_dx: f64 = dxhat.iter().zip(&xhat).map(|(d, x)| d * x).sum::<f64>() / m;
            let dx: Vec<f32> =
                dxhat.iter().zip(&xhat).map(|(d, x)| (rstd * (d - mean_d - x * mean_dx)) as f32).collect();
            (dx, sums)
        })
        .collect();
    let mut dx = vec![0f32; i.x.len()];
    let (mut dgamma, mut dbeta) = (vec![0f64; c], vec![0f64; c]);
    let (mut dscale, mut dshift) = (vec![0f32; b * c], vec![0f32; b * c]);
    for (k, (gdx, sums)) in per_group.into_iter().enumerate() {
        let (n, g) = (k / i.groups, k % i.groups);
        let start = (n * c + g * cg) * hw;
        dx[start..start + cg * hw].copy_from_slice(&gdx);
        for (ci, [sg, sb, ss, st]) in sums.into_iter().enumerate() {
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

/// The fused result on the plain CPU device.
pub fn fused(
    norm: &GroupNorm,
    x: &Tensor<4>,
    scale_shift: Option<&(Tensor<4>, Tensor<4>)>,
    apply_silu: bool,
) -> Option<Tensor<4>> {
    if !is_plain(x) {
        return fused_autodiff(norm, x, scale_shift, apply_silu);
    }
    let [_, c, _, _] = x.dims();
    let g = norm.num_groups;
    if g == 0 || !c.is_multiple_of(g) {
        return None;
    }
    let inputs = Inputs {
        x: Arc::new(host(x.clone())?),
        gamma: Arc::new(match &norm.gamma {
            Some(p) => host1(p.val())?,
            None => vec![1.0; c],
        }),
        beta: Arc::new(match &norm.beta {
            Some(p) => host1(p.val())?,
            None => vec![0.0; c],
        }),
        scale: match scale_shift {
            Some((s, _)) => Some(Arc::new(host(s.clone())?)),
            None => None,
        },
        shift: match scale_shift {
            Some((_, t)) => Some(Arc::new(host(t.clone())?)),
            None => None,
        },
        dims: x.dims(),
        groups: g,
        eps: norm.epsilon,
        silu: apply_silu,
    };
    let st = stats(&inputs);
    let out = forward(&inputs, &st);
    Some(Tensor::from_data(TensorData::new(out, inputs.dims), &x.device()))
}

#[derive(Debug)]
struct FusedBackward;

impl Backward<Flex, 5> for FusedBackward {
    type State = (Inputs, Arc<Vec<(f64, f64)>>);

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (inputs, st) = ops.state;
        let dy = flex_vec(&grads.consume::<Flex>(&ops.node));
        let (dx, dgamma, dbeta, dscale, dshift) = backward(&inputs, &st, &dy);
        let [b, c, h, w] = inputs.dims;
        let [px, pg, pb, ps, pt] = ops.parents;
        let flex = |v: Vec<f32>, shape: Vec<usize>| FlexFloat::from_data(TensorData::new(v, shape));
        if let Some(node) = px {
            grads.register::<Flex>(node.id, flex(dx, vec![b, c, h, w]));
        }
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex(dgamma, vec![c]));
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, flex(dbeta, vec![c]));
        }
        if let Some(node) = ps {
            grads.register::<Flex>(node.id, flex(dscale, vec![b, c, 1, 1]));
        }
        if let Some(node) = pt {
            grads.register::<Flex>(node.id, flex(dshift, vec![b, c, 1, 1]));
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
    if g == 0 || !c.is_multiple_of(g) {
        return None;
    }
    let device = x.device();
    let gamma = norm.gamma.as_ref()?.val().try_into_primitive::<Ad>().ok()?;
    let beta = norm.beta.as_ref()?.val().try_into_primitive::<Ad>().ok()?;
    let (s, t) = match scale_shift {
        Some((s, t)) => (s.clone(), t.clone()),
        None => (Tensor::<4>::zeros([b, c, 1, 1], &device), Tensor::<4>::zeros([b, c, 1, 1], &device)),
    };
    let (s, t) = (s.try_into_primitive::<Ad>().ok()?, t.try_into_primitive::<Ad>().ok()?);
    let inputs = Inputs {
        x: Arc::new(flex_vec(xa.primitive())),
        gamma: Arc::new(flex_vec(gamma.primitive())),
        beta: Arc::new(flex_vec(beta.primitive())),
        scale: scale_shift.map(|_| Arc::new(flex_vec(s.primitive()))),
        shift: scale_shift.map(|_| Arc::new(flex_vec(t.primitive()))),
        dims: [b, c, h, w],
        groups: g,
        eps: norm.epsilon,
        silu: apply_silu,
    };
    let st = Arc::new(stats(&inputs));
    let out = FlexFloat::from_data(TensorData::new(forward(&inputs, &st), [b, c, h, w]));
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
