//! `SiLU(h·W + b + a)` — a Linear layer, an added tensor (the MLP's timestep embedding) and
//! SiLU — as one op: one GEMM into a buffer pre-filled with `a + b`, one SiLU pass; on the
//! autodiff device one node whose backward forms `dz = dy·SiLU′(z)`, then `dW = hᵀ·dz`,
//! `dh = dz·Wᵀ`, `db = Σ dz`, `da = dz`. It replaces four burn ops (and their four backward
//! steps) per layer of the MLP, whose tensors are small enough that per-op costs dominate.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::Tensor;
use gemm::Parallelism;

use super::gemm::gemm_into;
use super::norm::exp_f32;
use super::{Ad, FlexFloat, column_sums, contiguous_f32, flex_from, simd_variant};

#[derive(Debug, Clone, Copy)]
struct Dims {
    rows: usize,
    d_in: usize,
    d_out: usize,
}

fn par(d: &Dims) -> Parallelism {
    let threads = rayon::current_num_threads().max(1);
    if d.rows * d.d_in * d.d_out >= 1 << 18 && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-z))
}

#[inline(always)]
fn silu_body(y: &mut [f32], z: &[f32]) {
    for (y, &z) in y.iter_mut().zip(z) {
        *y = z * sigmoid(z);
    }
}

#[inline(always)]
fn silu_grad_body(dz: &mut [f32], z: &[f32]) {
    for (d, &z) in dz.iter_mut().zip(z) {
        let s = sigmoid(z);
        *d *= s * (1.0 + z * (1.0 - s));
    }
}

simd_variant!(
    /// See [`silu_body`].
    pub(super) fn silu_into => silu_body(y: &mut [f32], z: &[f32])
);
simd_variant!(
    /// See [`silu_grad_body`].
    pub(super) fn silu_grad => silu_grad_body(dz: &mut [f32], z: &[f32])
);

/// `z = h·W + b + a` and `y = SiLU(z)`.
fn forward(d: &Dims, h: &[f32], w: &[f32], b: Option<&[f32]>, a: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut z = a.to_vec();
    if let Some(b) = b {
        for row in z.chunks_exact_mut(d.d_out) {
            for (v, &bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
    gemm_into([d.rows, d.d_out, d.d_in], &mut z, d.d_out, true, (h, 1, d.d_in), (w, 1, d.d_out), 1.0, par(d));
    let mut y = vec![0f32; z.len()];
    silu_into(&mut y, &z);
    (y, z)
}

#[derive(Debug, Clone)]
struct State {
    h: FlexFloat,
    w: FlexFloat,
    z: FlexFloat,
    dims: Dims,
}

#[derive(Debug)]
struct LinearSiluBackward;

impl Backward<Flex, 4> for LinearSiluBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let State { h, w, z, dims: d } = ops.state;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node)).expect("f32 output gradient");
        let sl = |t: &FlexFloat| t.as_slice::<f32>().expect("contiguous f32").to_vec();
        let mut dz = sl(&dy);
        silu_grad(&mut dz, z.as_slice::<f32>().expect("contiguous f32 pre-activation"));
        let [ph, pw, pb, pa] = ops.parents;
        let (hs, ws) =
            (h.as_slice::<f32>().expect("contiguous h"), w.as_slice::<f32>().expect("contiguous W"));
        if let Some(node) = ph {
            let mut dh = vec![0f32; d.rows * d.d_in];
            gemm_into(
                [d.rows, d.d_in, d.d_out],
                &mut dh,
                d.d_in,
                false,
                (&dz, 1, d.d_out),
                (ws, d.d_out, 1),
                1.0,
                par(&d),
            );
            grads.register::<Flex>(node.id, flex_from(dh, vec![d.rows, d.d_in]));
        }
        if let Some(node) = pw {
            let mut dw = vec![0f32; d.d_in * d.d_out];
            gemm_into(
                [d.d_in, d.d_out, d.rows],
                &mut dw,
                d.d_out,
                false,
                (hs, d.d_in, 1),
                (&dz, 1, d.d_out),
                1.0,
                par(&d),
            );
            grads.register::<Flex>(node.id, flex_from(dw, vec![d.d_in, d.d_out]));
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, flex_from(column_sums(&dz, d.d_out), vec![d.d_out]));
        }
        if let Some(node) = pa {
            grads.register::<Flex>(node.id, flex_from(dz, vec![d.rows, d.d_out]));
        }
    }
}

/// The op on the CPU device, plain or autodiff; `None` elsewhere or for mismatched shapes.
pub fn linear_add_silu(
    h: &Tensor<2>,
    w: &Tensor<2>,
    b: Option<&Tensor<1>>,
    a: &Tensor<2>,
) -> Option<Tensor<2>> {
    let ([rows, d_in], [wi, d_out]) = (h.dims(), w.dims());
    if wi != d_in
        || a.dims() != [rows, d_out]
        || b.is_some_and(|b| b.dims() != [d_out])
        || rows * d_in * d_out == 0
    {
        return None;
    }
    let d = Dims { rows, d_in, d_out };
    let shape = vec![rows, d_out];
    let plain = |t: Tensor<2>| t.try_into_primitive::<Flex>().ok().and_then(contiguous_f32);
    if let Some(hp) = plain(h.clone()) {
        let (wp, ap) = (plain(w.clone())?, plain(a.clone())?);
        let bp = match b {
            Some(b) => Some(contiguous_f32(b.clone().try_into_primitive::<Flex>().ok()?)?),
            None => None,
        };
        let (y, _) = forward(
            &d,
            hp.as_slice::<f32>()?,
            wp.as_slice::<f32>()?,
            bp.as_ref().and_then(|b| b.as_slice::<f32>()),
            ap.as_slice::<f32>()?,
        );
        return Some(Tensor::from_primitive::<Flex>(flex_from(y, shape)));
    }
    let ha = h.clone().try_into_primitive::<Ad>().ok()?;
    let wa = w.clone().try_into_primitive::<Ad>().ok()?;
    let aa = a.clone().try_into_primitive::<Ad>().ok()?;
    let ba = match b {
        Some(b) => b.clone(),
        None => Tensor::<1>::zeros([d_out], &h.device()),
    }
    .try_into_primitive::<Ad>()
    .ok()?;
    let (hp, wp) = (contiguous_f32(ha.primitive().clone())?, contiguous_f32(wa.primitive().clone())?);
    let (ap, bp) = (contiguous_f32(aa.primitive().clone())?, contiguous_f32(ba.primitive().clone())?);
    let (y, z) = forward(
        &d,
        hp.as_slice::<f32>()?,
        wp.as_slice::<f32>()?,
        b.and(bp.as_slice::<f32>()),
        ap.as_slice::<f32>()?,
    );
    let out = flex_from(y, shape.clone());
    let result = match LinearSiluBackward
        .prepare::<NoCheckpointing>([ha.node(), wa.node(), ba.node(), aa.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(State { h: hp, w: wp, z: flex_from(z, shape), dims: d }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(result))
}
