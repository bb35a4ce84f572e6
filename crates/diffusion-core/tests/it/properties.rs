//! Properties that follow from the definitions, checked on random inputs (proptest) and by
//! Monte Carlo.

use burn::tensor::Tensor;
use diffusion_core::{
    BetaSchedule, DiffusionConfig, DiffusionTables, GaussianDiffusion, ModelMean, normal_kl, space_timesteps,
};
use proptest::prelude::*;

use crate::common::{device, host_random, tensor, timesteps, values};

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn kl_is_nonnegative_and_zero_between_equal_gaussians(
        m1 in prop::collection::vec(-5.0f32..5.0, 16),
        m2 in prop::collection::vec(-5.0f32..5.0, 16),
        l1 in prop::collection::vec(-6.0f32..3.0, 16),
        l2 in prop::collection::vec(-6.0f32..3.0, 16),
    ) {
        let dev = device();
        let t = |v: &Vec<f32>| tensor(v, [16], &dev);
        let kl = values(normal_kl(t(&m1), t(&l1), t(&m2), t(&l2)));
        for (i, k) in kl.iter().enumerate() {
            // f32 cancellation in -1 + exp(0) + ... allows a few ulps below zero.
            prop_assert!(*k >= -1e-5, "KL[{i}] = {k}");
        }
        let same = values(normal_kl(t(&m1), t(&l1), t(&m1), t(&l1)));
        // (-1 + l) - l rounds in f32, so "zero" means a few ulps of 1.
        prop_assert!(same.iter().all(|&k| k.abs() <= 4.0 * f32::EPSILON), "KL(p || p) = {same:?}");
    }

    #[test]
    fn posterior_variance_lies_between_zero_and_beta(
        betas in prop::collection::vec(1e-5f64..0.5, 2..200),
    ) {
        let tb = DiffusionTables::new(betas.clone()).unwrap();
        for (t, (&pv, &b)) in tb.posterior_variance.iter().zip(&betas).enumerate() {
            prop_assert!(pv >= 0.0 && pv <= b * (1.0 + 1e-12), "t = {t}: beta~ = {pv}, beta = {b}");
        }
        prop_assert_eq!(tb.posterior_variance[0], 0.0);
    }

    #[test]
    fn respacing_keeps_alpha_bar_at_the_kept_steps(
        num_t in 2usize..1500,
        sections in prop::collection::vec(1usize..40, 1..4),
        cosine in any::<bool>(),
    ) {
        let spec = sections.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let Ok(kept) = space_timesteps(num_t, &spec) else { return Ok(()); };
        prop_assume!(kept.len() >= 2);
        let name = if cosine { "cosine" } else { "linear" };
        let schedule = BetaSchedule::named(name, num_t).unwrap();
        // Long linear schedules at small T have betas above 1: skip those invalid processes.
        let Ok(d) = GaussianDiffusion::from_schedule(&schedule, DiffusionConfig::default()) else { return Ok(()); };
        let r = d.respace(&kept).unwrap();
        prop_assert_eq!(r.timestep_map(), kept.as_slice());
        for (i, &k) in kept.iter().enumerate() {
            let (a, b) = (r.tables().alphas_cumprod[i], d.tables().alphas_cumprod[k]);
            // 1 - beta' = a_k / a_prev loses relative precision when that ratio is tiny, so allow a
            // small absolute error too (as in the reference, which computes the same way).
            prop_assert!((a - b).abs() <= 1e-12 * b.abs() + 1e-14, "step {k}: {a} vs {b}");
        }
        // Respacing a respaced process composes the maps.
        let again = r.respace(&[0, kept.len() - 1]).unwrap();
        prop_assert_eq!(again.timestep_map(), &[kept[0], kept[kept.len() - 1]][..]);
    }
}

#[test]
fn q_sample_has_the_closed_form_moments() {
    // x_t = sqrt(a) x0 + sqrt(1 - a) eps: mean sqrt(a) x0, variance 1 - a, for a = alpha_bar_t.
    let dev = device();
    let d =
        GaussianDiffusion::from_schedule(&BetaSchedule::Linear { num_timesteps: 1000 }, Default::default())
            .unwrap();
    let (b, n) = (4usize, 50_000usize);
    let ts = [0usize, 250, 600, 999];
    let x0 = Tensor::<2>::ones([b, n], &dev).mul_scalar(0.7);
    let noise = host_random([b, n], true, 3, &dev);
    let xt = values(d.q_sample(x0, timesteps(&ts, &dev), noise));
    for (row, &t) in ts.iter().enumerate() {
        let xs = &xt[row * n..(row + 1) * n];
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = xs.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let a = d.tables().alphas_cumprod[t];
        let (m_exp, v_exp) = (a.sqrt() * 0.7, 1.0 - a);
        // 5 standard errors: sd(mean) = sqrt(v / n), sd(var) ~ v sqrt(2 / n).
        assert!(
            (mean - m_exp).abs() < 5.0 * (v_exp / n as f64).sqrt() + 1e-6,
            "t = {t}: mean {mean} vs {m_exp}"
        );
        assert!(
            (var - v_exp).abs() < 5.0 * v_exp * (2.0 / n as f64).sqrt() + 1e-7,
            "t = {t}: var {var} vs {v_exp}"
        );
    }
}

#[test]
fn every_prediction_inverts_its_own_target() {
    // With a perfect network, each mean parameterisation recovers x0 exactly (up to f32).
    let dev = device();
    let shape = [5, 3, 4, 4];
    let x0 = host_random(shape, false, 11, &dev);
    let noise = host_random(shape, true, 12, &dev);
    let t = timesteps(&[0, 1, 300, 700, 999], &dev);
    for mean in [ModelMean::Epsilon, ModelMean::StartX, ModelMean::PreviousX, ModelMean::Velocity] {
        let config = DiffusionConfig { mean, ..Default::default() };
        let d =
            GaussianDiffusion::from_schedule(&BetaSchedule::Cosine { num_timesteps: 1000 }, config).unwrap();
        let x_t = d.q_sample(x0.clone(), t.clone(), noise.clone());
        let perfect = match mean {
            ModelMean::Epsilon => noise.clone(),
            ModelMean::StartX => x0.clone(),
            ModelMean::PreviousX => d.q_posterior_mean_variance(x0.clone(), x_t.clone(), t.clone()).mean,
            ModelMean::Velocity => d.velocity(x0.clone(), t.clone(), noise.clone()),
        };
        let p = d.p_mean_variance(perfect.clone(), x_t.clone(), t.clone(), false);
        let got = values(p.pred_x0);
        let want = values(x0.clone());
        // At t = T-1 of the cosine schedule, alpha_bar ~ 1e-8: 1/sqrt(alpha_bar) amplifies f32
        // rounding of x_t, so check t < T-1 tightly and the last sample loosely.
        let per = 3 * 16;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let tol = if i / per == 4 {
                0.5
            } else if i / per == 3 {
                2e-3
            } else {
                1e-4
            };
            assert!((g - w).abs() <= tol, "{mean:?}: x0[{i}] {g} vs {w}");
        }
        // And the training loss of a perfect network is zero.
        let l = d.training_losses(x0.clone(), t.clone(), noise.clone(), |_, _| perfect);
        assert!(values(l.loss).iter().all(|&x| x.abs() < 1e-6), "{mean:?}: perfect network has nonzero loss");
    }
}
