//! Classifier-free guidance training: label dropout in the batches, and the config's checks.

use std::sync::Arc;

use burn::data::dataloader::DataLoader;
use burn::tensor::Device;
use diffusion_train::TrainConfig;
use diffusion_train::loader::{BatchPlan, Examples, LabelDropout, TrainLoader};

fn labels(dropout: Option<LabelDropout>, seed: u64) -> Vec<i64> {
    let data = diffusion_train::data::load(&"shapes".parse().unwrap(), 16, 0).unwrap();
    let n = data.as_images().unwrap().len();
    let examples = Examples::new(Arc::new(data), (0..n).collect());
    let plan = BatchPlan {
        steps: 4,
        steps_per_epoch: 4,
        batch_size: 64,
        micro_size: 64,
        seed,
        random_flip: false,
        class_cond: true,
        label_dropout: dropout,
        offset_noise: 0.0,
    };
    let loader = TrainLoader::new(examples, plan, Device::flex(), 1);
    loader
        .iter()
        .flat_map(|b| b.unwrap().y.unwrap().into_data().convert::<i64>().try_to_vec::<i64>().unwrap())
        .collect()
}

/// With p = 0.25 about a quarter of 256 labels become the null label 4 (binomial: 64 ± 7; the
/// bounds are 4.5 σ), the same ones for the same seed and others for another seed, and the
/// kept labels are the data's own (p = 0 gives them all, none null).
#[test]
fn label_dropout_replaces_that_share_of_labels_by_the_null_label() {
    let drop = Some(LabelDropout { probability: 0.25, null_label: 4 });
    let plain = labels(None, 1);
    let dropped = labels(drop, 1);
    assert_eq!(plain.len(), 256);
    assert!(plain.iter().all(|&y| (0..4).contains(&y)), "the shapes data has 4 classes");
    let nulls = dropped.iter().filter(|&&y| y == 4).count();
    assert!((33..=95).contains(&nulls), "{nulls} of 256 dropped at p = 0.25");
    for (a, b) in plain.iter().zip(&dropped) {
        assert!(b == a || *b == 4, "a kept label changed: {a} → {b}");
    }
    assert_eq!(labels(drop, 1), dropped, "a pure function of the seed and the example");
    let other: Vec<bool> = labels(drop, 2).iter().map(|&y| y == 4).collect();
    let here: Vec<bool> = dropped.iter().map(|&y| y == 4).collect();
    assert_ne!(other, here, "another seed drops other labels");
}

/// The config refuses label dropout without a null class or outside [0, 1), and the trainer's
/// batches use it.
#[test]
fn label_dropout_needs_a_null_class() {
    let mut cfg = TrainConfig::preset("default").unwrap();
    cfg.label_dropout = 0.1;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("null class"), "{err}");
    if let diffusion_models::checkpoint::ModelSpec::Unet(u) = &mut cfg.model {
        u.null_class = true;
    }
    cfg.validate().unwrap();
    assert_eq!(cfg.label_dropout().map(|d| d.null_label), Some(4));
    cfg.label_dropout = 1.0;
    assert!(cfg.validate().unwrap_err().to_string().contains("[0, 1)"));
    cfg.label_dropout = 0.1;
    cfg.class_cond = false;
    assert!(cfg.validate().is_err());
}

/// Min-SNR-γ: on the same first batch (same weights, t and noise), each example's loss is the
/// unweighted one times min(SNR_t, γ)/SNR_t for ε, min(SNR_t, γ) for x_0 and min(SNR_t, γ)/(SNR_t
/// + 1) for v (Hang et al. 2023, Eq. 8; diffusers' `compute_snr` recipe), SNR_t = ᾱ_t/(1 − ᾱ_t).
#[test]
fn min_snr_weights_each_example_by_its_clipped_snr() {
    use diffusion_core::ModelMean;
    for mean in [ModelMean::Epsilon, ModelMean::StartX, ModelMean::Velocity] {
        let mut cfg = TrainConfig::preset("tiny-mlp").unwrap();
        cfg.process.config.mean = mean;
        let plain = diffusion_train::stepper::Stepper::new(&cfg, &Device::flex(), 1).unwrap().step_report();
        cfg.min_snr_gamma = Some(5.0);
        let weighted =
            diffusion_train::stepper::Stepper::new(&cfg, &Device::flex(), 1).unwrap().step_report();
        assert_eq!(plain.timesteps, weighted.timesteps);
        let ab = cfg.process.build().unwrap().tables().alphas_cumprod.clone();
        let mut clipped = 0;
        for ((&t, a), b) in plain.timesteps.iter().zip(&plain.losses).zip(&weighted.losses) {
            let snr = ab[t] / (1.0 - ab[t]);
            let w = match mean {
                ModelMean::Epsilon => snr.min(5.0) / snr,
                ModelMean::StartX => snr.min(5.0),
                _ => snr.min(5.0) / (snr + 1.0),
            };
            clipped += usize::from(snr > 5.0);
            let want = a * w as f32;
            assert!((b - want).abs() <= 1e-5 * want.abs().max(1e-3), "{mean:?} t = {t}: {b} vs {want}");
        }
        assert!(clipped > 0 && clipped < plain.timesteps.len(), "both sides of γ are covered");
    }
    let mut cfg = TrainConfig::preset("tiny-mlp").unwrap();
    cfg.min_snr_gamma = Some(0.0);
    assert!(cfg.validate().unwrap_err().to_string().contains("positive"));
    cfg.min_snr_gamma = Some(5.0);
    cfg.process.config.loss = diffusion_core::LossKind::Kl;
    assert!(cfg.validate().unwrap_err().to_string().contains("MSE term"));
}

/// Offset noise adds one 𝒩(0, 1) draw per example and channel, times the offset, to every pixel
/// of the channel: the difference from the plain noise is constant over each channel's pixels,
/// differs between channels and examples, and has the offset's scale.
#[test]
fn offset_noise_shifts_each_channel_by_one_draw() {
    let batches = |offset: f64| {
        let data = diffusion_train::data::load(&"shapes".parse().unwrap(), 16, 0).unwrap();
        let n = data.as_images().unwrap().len();
        let plan = BatchPlan {
            steps: 1,
            steps_per_epoch: 1,
            batch_size: 32,
            micro_size: 32,
            seed: 5,
            random_flip: false,
            class_cond: false,
            label_dropout: None,
            offset_noise: offset,
        };
        let loader =
            TrainLoader::new(Examples::new(Arc::new(data), (0..n).collect()), plan, Device::flex(), 1);
        let b = loader.iter().next().unwrap().unwrap();
        b.noise.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    };
    let (plain, offset) = (batches(0.0), batches(0.1));
    let per_channel = 16 * 16;
    let shifts: Vec<f32> = plain
        .chunks(per_channel)
        .zip(offset.chunks(per_channel))
        .map(|(p, o)| {
            let d = o[0] - p[0];
            assert!(p.iter().zip(o).all(|(p, o)| ((o - p) - d).abs() < 1e-6), "one shift per channel");
            d
        })
        .collect();
    assert_eq!(shifts.len(), 32 * 3);
    let var = shifts.iter().map(|d| d * d).sum::<f32>() / shifts.len() as f32;
    assert!((0.004..0.02).contains(&var), "offset variance {var} (0.01 expected)");
    assert!(shifts.windows(2).all(|w| w[0] != w[1]));
}

/// The EMA warm-up decay equals diffusers' `EMAModel.get_decay` (closed form: 0 at the first
/// step, then 1 − (1 + (k − 1)/inv_gamma)^−power, at least min_decay, at most the rate), and the
/// trainer applies it: after the first step the EMA copy *is* the online network (decay 0),
/// without warm-up it is 0.9 · initial + 0.1 · online.
#[test]
fn ema_warmup_follows_the_power_schedule() {
    let w = diffusion_train::EmaWarmup::default();
    assert_eq!(w.decay(0.9999, 1), 0.0);
    // diffusers 0.42.1: EMAModel(decay=0.9999, use_ema_warmup=True).get_decay(2), get_decay(1001).
    assert!((w.decay(0.9999, 2) - 0.3700394750525634).abs() < 1e-15);
    assert!((w.decay(0.9999, 1001) - 0.9900066611160449).abs() < 1e-15);
    assert_eq!(w.decay(0.9, 1_000_000), 0.9, "capped at the rate");
    let floor = diffusion_train::EmaWarmup { min_decay: 0.5, ..w };
    assert_eq!(floor.decay(0.9999, 2), 0.5);
    assert_eq!(floor.decay(0.9999, 1), 0.0, "the first step copies, as diffusers' step 0");
    let mut cfg = TrainConfig::preset("tiny-mlp").unwrap();
    let flat = |net: &diffusion_train::trainer::Net| {
        let diffusion_train::trainer::Net::Mlp(m) = net else { panic!("an MLP") };
        m.input.weight.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    };
    let after_one = |cfg: &TrainConfig| {
        let mut s = diffusion_train::stepper::Stepper::new(cfg, &Device::flex(), 2).unwrap();
        s.step();
        (flat(s.network()), flat(&s.ema()[0]))
    };
    let (online, ema) = after_one(&cfg);
    assert!(online.iter().zip(&ema).any(|(a, b)| (a - b).abs() > 1e-7), "rate 0.9 keeps 90 % of the start");
    cfg.ema_warmup = Some(w);
    let (online, ema) = after_one(&cfg);
    assert_eq!(online, ema, "warm-up: the first update copies the online weights");
    cfg.ema_warmup = Some(diffusion_train::EmaWarmup { inv_gamma: 0.0, ..w });
    assert!(cfg.validate().unwrap_err().to_string().contains("ema_warmup"));
}
