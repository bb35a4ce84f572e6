//! diffusion-core on its own: a diffusion process, a hand-written denoiser and an ancestral
//! sampler written from `p_mean_variance`, on 2-D Gaussian data where the optimal denoiser is
//! known in closed form.
//!
//! For x_0 ~ 𝒩(μ, diag s²), x_t = √ᾱ x_0 + √(1−ᾱ) ε gives E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ)
//! exactly: with that ε̂, the training loss is the irreducible error and the sampler returns
//! the data distribution. Run: `cargo run -p diffusion-core --example gaussian_closed_form`.

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use diffusion_core::{BetaSchedule, DiffusionConfig, GaussianDiffusion, LossKind, ModelVariance};

const MU: [f32; 2] = [0.5, -0.3];
const S: [f32; 2] = [0.3, 0.2];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::flex();
    device.seed(2021); // every random draw below is reproducible
    let config =
        DiffusionConfig { variance: ModelVariance::FixedSmall, loss: LossKind::Mse, ..Default::default() };
    let full = GaussianDiffusion::from_schedule(&BetaSchedule::Cosine { num_timesteps: 1000 }, config)?;
    // Sample with 100 of the 1000 steps; the network sees the original step (`model_timesteps`).
    let d = full.respace_spec("100")?;
    let alphas = full.tables().alphas_cumprod.clone();

    // The optimal ε-predictor for the Gaussian data, evaluated at the original timesteps.
    let oracle = |x: Tensor<2>, t: Tensor<1>| -> Tensor<2> {
        let ts = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let xs = x.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let out: Vec<f32> = xs
            .chunks(2)
            .zip(&ts)
            .flat_map(|(p, &tv)| {
                let ab = alphas[tv.round() as usize] as f32;
                (0..2).map(move |k| {
                    (1.0 - ab).sqrt() * (p[k] - ab.sqrt() * MU[k]) / (ab * S[k] * S[k] + 1.0 - ab)
                })
            })
            .collect();
        Tensor::from_data(TensorData::new(out, [ts.len(), 2]), &x.device())
    };

    // 1. L_simple of the oracle against a denoiser that predicts zero.
    let n = 4000;
    let data = |device: &Device| {
        Tensor::<2>::random([n, 2], Distribution::Normal(0.0, 1.0), device)
            * Tensor::<1>::from_floats(S, device).reshape([1, 2])
            + Tensor::<1>::from_floats(MU, device).reshape([1, 2])
    };
    let x0 = data(&device);
    let t = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, 1000.0), &device);
    let noise = Tensor::<2>::random([n, 2], Distribution::Normal(0.0, 1.0), &device);
    let loss_of = |model: &dyn Fn(Tensor<2>, Tensor<1>) -> Tensor<2>| -> f32 {
        let l = full.training_losses(x0.clone(), t.clone(), noise.clone(), model);
        l.loss.mean().into_scalar()
    };
    let oracle_loss = loss_of(&|x, t| oracle(x, full.model_timesteps(t.int())));
    let zero_loss = loss_of(&|x, _t| x.zeros_like());
    println!("L_simple: optimal denoiser {oracle_loss:.4}, zero denoiser {zero_loss:.4}");
    assert!(oracle_loss < zero_loss, "the optimal denoiser must have the lower loss");

    // 2. Ancestral sampling written out from p_mean_variance, with our own noise at each step.
    let mut x = Tensor::<2>::random([n, 2], Distribution::Normal(0.0, 1.0), &device);
    for i in (0..d.num_timesteps()).rev() {
        let t = Tensor::<1, Int>::full([n], i as i64, &device);
        let out = oracle(x.clone(), d.model_timesteps(t.clone()));
        let p = d.p_mean_variance(out, x.clone(), t, false);
        x = if i > 0 {
            let z = Tensor::<2>::random([n, 2], Distribution::Normal(0.0, 1.0), &device);
            p.mean + p.log_variance.mul_scalar(0.5).exp() * z
        } else {
            p.mean
        };
    }
    let mean: Vec<f32> = x.clone().mean_dim(0).into_data().try_to_vec::<f32>().unwrap();
    let std: Vec<f32> =
        (x.clone() - x.mean_dim(0)).square().mean_dim(0).sqrt().into_data().try_to_vec::<f32>().unwrap();
    println!("samples: mean {mean:?} (data {MU:?}), std {std:?} (data {S:?})");
    // Fixed-small Σ with 100 of 1000 steps is slightly under-dispersed (the posterior variance
    // of a coarse step), hence a tolerance beyond the Monte-Carlo error alone.
    for k in 0..2 {
        assert!((mean[k] - MU[k]).abs() < 0.03, "mean of dimension {k}");
        assert!((std[k] - S[k]).abs() < 0.03, "standard deviation of dimension {k}");
    }
    Ok(())
}
