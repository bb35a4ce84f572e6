//! Block-level checks with expected values derived by hand from the definitions.

use burn::module::Param;
use burn::tensor::Tensor;
use diffusion_models::blocks::{
    AttentionBlockConfig, AttentionOrder, Downsample, ResBlockConfig, Resample, Upsample, avg_pool2x,
    qkv_attention, upsample_nearest2x,
};
use diffusion_models::timestep_embedding;

use crate::{assert_close, device, host_uniform, tensor, values};

#[test]
fn timestep_embedding_is_cos_then_sin_with_geometric_frequencies() {
    let dev = device();
    // dim 6: half = 3, frequencies 10000^(-i/3) = 1, 10000^(-1/3), 10000^(-2/3).
    let t = Tensor::<1>::from_floats([0.0, 1.0, 250.5], &dev);
    let e = values(timestep_embedding(t, 6, 10_000.0));
    let freqs = [1.0f64, 10_000f64.powf(-1.0 / 3.0), 10_000f64.powf(-2.0 / 3.0)];
    for (row, tv) in [0.0f64, 1.0, 250.5].iter().enumerate() {
        let mut want: Vec<f32> = freqs.iter().map(|f| (tv * f).cos() as f32).collect();
        want.extend(freqs.iter().map(|f| (tv * f).sin() as f32));
        assert_close(&format!("t = {tv}"), &e[row * 6..row * 6 + 6], &want, 2e-5);
    }
    // Odd width: one zero column appended.
    let e = values(timestep_embedding(Tensor::<1>::from_floats([3.0], &dev), 5, 10_000.0));
    assert_eq!(e.len(), 5);
    assert_eq!(e[4], 0.0);
    assert!((e[0] - 3f32.cos()).abs() < 1e-6 && (e[2] - 3f32.sin()).abs() < 1e-6);
}

/// Attention computed naively on the host, head by head, from the definition:
/// softmax_s(q_t · k_s / √ch) v_s.
fn naive_attention(
    qkv: &[f32],
    b: usize,
    heads: usize,
    ch: usize,
    len: usize,
    order: AttentionOrder,
) -> Vec<f32> {
    let width = 3 * heads * ch;
    // Channel index of (part, head, c) in the packed qkv, per order.
    let idx = |part: usize, head: usize, c: usize| match order {
        AttentionOrder::Legacy => head * 3 * ch + part * ch + c,
        AttentionOrder::New => part * heads * ch + head * ch + c,
    };
    let at = |bi: usize, chan: usize, pos: usize| qkv[bi * width * len + chan * len + pos];
    let mut out = vec![0.0f32; b * heads * ch * len];
    for bi in 0..b {
        for h in 0..heads {
            for t in 0..len {
                let logits: Vec<f64> = (0..len)
                    .map(|s| {
                        (0..ch)
                            .map(|c| f64::from(at(bi, idx(0, h, c), t)) * f64::from(at(bi, idx(1, h, c), s)))
                            .sum::<f64>()
                            / (ch as f64).sqrt()
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                for c in 0..ch {
                    let v: f64 = (0..len)
                        .map(|s| (logits[s] - m).exp() / z * f64::from(at(bi, idx(2, h, c), s)))
                        .sum();
                    out[bi * heads * ch * len + (h * ch + c) * len + t] = v as f32;
                }
            }
        }
    }
    out
}

#[test]
fn attention_head_split_matches_the_definition_in_both_orders() {
    let dev = device();
    let (b, heads, ch, len) = (2, 3, 4, 5);
    let qkv = host_uniform([b, 3 * heads * ch, len], 5, &dev);
    let data = values(qkv.clone());
    for order in [AttentionOrder::Legacy, AttentionOrder::New] {
        let got = values(qkv_attention(qkv.clone(), heads, order));
        assert_close(&format!("{order:?}"), &got, &naive_attention(&data, b, heads, ch, len, order), 1e-5);
    }
    // The two orders really differ on the same input.
    let legacy = values(qkv_attention(qkv.clone(), heads, AttentionOrder::Legacy));
    let new = values(qkv_attention(qkv, heads, AttentionOrder::New));
    assert!(legacy.iter().zip(&new).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn attention_block_starts_as_the_identity() {
    // proj_out is zero-initialised (ADM's zero_module): the residual branch adds nothing at init.
    let dev = device();
    let block = AttentionBlockConfig::new(64).with_num_heads(4).init(&dev);
    let x = host_uniform([2, 64, 4, 4], 9, &dev);
    assert_eq!(values(block.forward(x.clone())), values(x));
}

#[test]
fn adagn_scale_shift_is_norm_times_one_plus_scale_plus_shift() {
    // A ResBlock with AdaGN whose emb_layers output is (scale, shift) = (s, b) for every channel:
    // with the output conv set to a 1x1-like identity we could read h; instead check the effect on
    // the block output through linearity: the zero-initialised out conv makes the block the
    // identity at init, so set it by hand to the centre-tap identity and compare with the formula.
    let dev = device();
    let c = 32;
    let cfg = ResBlockConfig::new(c, 8).with_use_scale_shift_norm(true);
    let mut block = cfg.init(&dev);
    // emb_layers: weight 0, bias = [scale (c values) | shift (c values)].
    let (scale, shift) = (0.5f32, -0.25f32);
    let mut bias = vec![scale; c];
    bias.extend(vec![shift; c]);
    block.emb_layers.linear.weight = Param::from_tensor(Tensor::zeros([8, 2 * c], &dev));
    block.emb_layers.linear.bias = Some(Param::from_tensor(tensor(bias, [2 * c], &dev)));
    // out conv: identity (centre tap 1 on the diagonal), no bias; in conv: identity as well.
    let mut w = vec![0.0f32; c * c * 9];
    for i in 0..c {
        w[(i * c + i) * 9 + 4] = 1.0;
    }
    let ident = || Param::from_tensor(tensor(w.clone(), [c, c, 3, 3], &dev));
    block.out_layers.conv.weight = ident();
    block.out_layers.conv.bias = Some(Param::from_tensor(Tensor::zeros([c], &dev)));
    block.in_layers.conv.weight = ident();
    block.in_layers.conv.bias = Some(Param::from_tensor(Tensor::zeros([c], &dev)));
    let x = host_uniform([1, c, 4, 4], 3, &dev);
    let emb = host_uniform([1, 8], 4, &dev);
    let out = values(block.forward(x.clone(), emb));
    // Expected: x + silu(GN(silu(GN(x))) * (1 + s) + b), with both GroupNorms at gamma 1, beta 0.
    let gn = |v: &[f32]| -> Vec<f32> {
        // 32 groups of 1 channel x 16 positions.
        let mut o = vec![0.0; v.len()];
        for g in 0..c {
            let s = &v[g * 16..(g + 1) * 16];
            let m = s.iter().map(|&a| f64::from(a)).sum::<f64>() / 16.0;
            let var = s.iter().map(|&a| (f64::from(a) - m).powi(2)).sum::<f64>() / 16.0;
            for (k, &a) in s.iter().enumerate() {
                o[g * 16 + k] = ((f64::from(a) - m) / (var + 1e-5).sqrt()) as f32;
            }
        }
        o
    };
    let silu = |a: f32| a / (1.0 + (-a).exp());
    let xs = values(x);
    let h1: Vec<f32> = gn(&xs).into_iter().map(silu).collect();
    let h2: Vec<f32> = gn(&h1).into_iter().map(|a| silu(a * (1.0 + scale) + shift)).collect();
    let want: Vec<f32> = xs.iter().zip(&h2).map(|(a, b)| a + b).collect();
    assert_close("AdaGN res block", &out, &want, 1e-4);
}

#[test]
fn resampling_shapes_and_values() {
    let dev = device();
    let x = tensor((0..16).map(|v| v as f32).collect(), [1, 1, 4, 4], &dev);
    // Average pooling: top-left 2x2 block is 0, 1, 4, 5 -> 2.5.
    let p = avg_pool2x(x.clone());
    assert_eq!(p.dims(), [1, 1, 2, 2]);
    assert_eq!(values(p), vec![2.5, 4.5, 10.5, 12.5]);
    // Nearest upsampling repeats each pixel in a 2x2 block.
    let u = upsample_nearest2x(x.clone());
    assert_eq!(u.dims(), [1, 1, 8, 8]);
    let uv = values(u);
    assert_eq!(&uv[..4], &[0.0, 0.0, 1.0, 1.0]);
    assert_eq!(&uv[8..12], &[0.0, 0.0, 1.0, 1.0]);
    // Learned resamplers keep channels and change resolution.
    let x = host_uniform([2, 32, 8, 8], 1, &dev);
    assert_eq!(Downsample::new(32, true, &dev).forward(x.clone()).dims(), [2, 32, 4, 4]);
    assert_eq!(Upsample::new(32, true, &dev).forward(x.clone()).dims(), [2, 32, 16, 16]);
    let emb = host_uniform([2, 16], 2, &dev);
    for (r, side) in [(Resample::Down, 4), (Resample::Up, 16), (Resample::None, 8)] {
        let b = ResBlockConfig::new(32, 16).with_out_channels(Some(64)).with_resample(r).init(&dev);
        assert_eq!(b.forward(x.clone(), emb.clone()).dims(), [2, 64, side, side], "{r:?}");
        assert!(b.skip_connection.is_some(), "a 1x1 skip projection when channels change");
    }
}

#[test]
fn residual_rescale_divides_by_sqrt2() {
    // At init the residual branch is zero (zero out conv), so the block returns skip(x) / √2.
    let dev = device();
    let x = host_uniform([1, 32, 4, 4], 8, &dev);
    let emb = host_uniform([1, 16], 2, &dev);
    let b = ResBlockConfig::new(32, 16).with_rescale_residual(true).init(&dev);
    let want: Vec<f32> = values(x.clone()).iter().map(|v| v / std::f32::consts::SQRT_2).collect();
    assert_close("rescaled", &values(b.forward(x, emb)), &want, 1e-6);
}
