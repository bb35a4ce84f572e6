//! Autodiff checks: the hybrid objective's stop-gradient (Nichol & Dhariwal 2021, §3.1: "we apply a
//! stop-gradient to the μ_θ(x_t, t) output for the L_vlb term").

use burn::tensor::Tensor;
use diffusion_core::{BetaSchedule, DiffusionConfig, GaussianDiffusion, LossKind, ModelVariance};

use crate::common::{device, host_random, timesteps, values};

fn setup(loss: LossKind) -> (GaussianDiffusion, burn::tensor::Device) {
    let config = DiffusionConfig { variance: ModelVariance::LearnedRange, loss, ..Default::default() };
    let d = GaussianDiffusion::from_schedule(&BetaSchedule::Cosine { num_timesteps: 100 }, config).unwrap();
    (d, device().autodiff())
}

/// Gradients of `pick(losses)` with respect to the network output, split into (mean, variance) channels.
fn output_grads(
    loss: LossKind,
    pick: impl Fn(&diffusion_core::TrainingLosses) -> Tensor<1>,
) -> (Vec<f32>, Vec<f32>) {
    let (d, ad) = setup(loss);
    let x0 = host_random([3, 2, 4, 4], false, 1, &ad);
    let noise = host_random([3, 2, 4, 4], true, 2, &ad);
    let out = host_random([3, 4, 4, 4], false, 3, &ad).mul_scalar(0.9).require_grad();
    let t = timesteps(&[0, 40, 99], &ad);
    let losses = d.training_losses(x0, t, noise, |_, _| out.clone());
    let grads = pick(&losses).sum().backward();
    let g = out.grad(&grads).expect("the output receives a gradient");
    let mut parts = g.chunk(2, 1);
    let var = values(parts.pop().unwrap());
    let mean = values(parts.pop().unwrap());
    (mean, var)
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn hybrid_vlb_term_does_not_move_the_mean_output() {
    // d vb / d mean-channels must be exactly zero; d vb / d variance-channels must not be.
    let (vb_mean, vb_var) = output_grads(LossKind::RescaledMse, |l| l.vb.clone().expect("hybrid has vb"));
    assert!(vb_mean.iter().all(|&g| g == 0.0), "vb leaks a gradient into the mean: |g| = {}", norm(&vb_mean));
    assert!(norm(&vb_var) > 0.0, "vb must train the variance channels");

    // So the hybrid loss's mean gradient equals that of the MSE term alone.
    let (hyb_mean, _) = output_grads(LossKind::RescaledMse, |l| l.loss.clone());
    let (mse_mean, mse_var) = output_grads(LossKind::RescaledMse, |l| l.mse.clone().expect("hybrid has mse"));
    assert_eq!(hyb_mean, mse_mean);
    assert!(mse_var.iter().all(|&g| g == 0.0), "the MSE term does not depend on the variance channels");
}

#[test]
fn pure_vlb_objective_does_train_the_mean() {
    // Without the stop-gradient (L_VLB alone), the mean channels do receive gradient: the check above
    // would catch a missing detach.
    let (kl_mean, kl_var) = output_grads(LossKind::Kl, |l| l.loss.clone());
    assert!(norm(&kl_mean) > 0.0);
    assert!(norm(&kl_var) > 0.0);
}
