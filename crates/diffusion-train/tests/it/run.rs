//! Training runs end to end through burn's Learner: resume, non-finite guard, checkpoints,
//! objectives, importance sampling, microbatching.

use diffusion_core::{DiffusionConfig, LossKind, ModelMean, ModelVariance};
use diffusion_models::checkpoint::{ModelSpec, load_checkpoint};
use diffusion_train::checkpoint::{list_checkpoints, load_training_checkpoint};
use diffusion_train::log::read_metrics;
use diffusion_train::{
    ProgressStyle, Resume, RunOptions, TimestepSamplerKind, TrainConfig, TrainError, train,
};

use crate::{cpu, params, temp_dir};

fn opts(dir: &std::path::Path) -> RunOptions {
    RunOptions {
        run_dir: dir.to_path_buf(),
        devices: vec![cpu()],
        progress: ProgressStyle::Quiet,
        ..Default::default()
    }
}

/// The tiny UNet preset: 8×8 shapes, learned-range Σ, L_hybrid, importance-sampled t, two EMA
/// rates, a checkpoint every 2 steps.
fn tiny() -> TrainConfig {
    TrainConfig::preset("tiny").unwrap()
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let mut cfg = tiny();
    cfg.steps = 7;
    cfg.checkpoint_every = 2;
    cfg.microbatch = Some(2);

    let a = temp_dir("uninterrupted");
    let full = train(cfg.clone(), opts(&a)).unwrap();
    assert_eq!(full.steps_done, 7);
    assert!(!full.interrupted);

    // Killed after step 5 (mid-way through the epoch ending at 6): steps 4–5 are lost with it.
    let b = temp_dir("interrupted");
    let part = train(cfg.clone(), RunOptions { stop_after_steps: Some(5), ..opts(&b) }).unwrap();
    assert!(part.interrupted);
    assert_eq!(part.steps_done, 4, "the newest checkpoint is the one of step 4");
    assert_ne!(params(&part.trainer.net), params(&full.trainer.net));
    let steps: Vec<u64> = list_checkpoints(&b.join("checkpoints")).iter().map(|c| c.0).collect();
    assert_eq!(steps, vec![2, 4], "keep_last = 2 keeps the two newest");

    // Fresh start into a directory with checkpoints is refused (it would lose them).
    let err = train(cfg.clone(), opts(&b)).unwrap_err();
    assert!(matches!(err, TrainError::Resume(_)), "{err}");

    let resumed = train(cfg.clone(), RunOptions { resume: Resume::Auto, ..opts(&b) }).unwrap();
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(resumed.steps_done, 7);
    assert_eq!(params(&resumed.trainer.net), params(&full.trainer.net), "online weights differ");
    for (x, y) in resumed.trainer.ema.iter().zip(&full.trainer.ema) {
        assert_eq!(params(x), params(y), "EMA weights differ");
    }
    // The final checkpoints agree too, sampler state included.
    let ca = load_training_checkpoint(&a.join("checkpoints/step-00000007.ckpt")).unwrap();
    let cb = load_training_checkpoint(&b.join("checkpoints/step-00000007.ckpt")).unwrap();
    assert_eq!(
        serde_json::to_value(&ca.state.timestep_sampler).unwrap(),
        serde_json::to_value(&cb.state.timestep_sampler).unwrap()
    );
    // The metrics of the resumed run have each training step once.
    let rows = read_metrics(&b.join("metrics.csv")).unwrap();
    let mut train_steps: Vec<u64> = rows.iter().filter(|r| r.split == "train").map(|r| r.step).collect();
    train_steps.dedup();
    assert_eq!(train_steps, (0..7).collect::<Vec<_>>());

    // The checkpoint is also a sampling checkpoint: its primary network is the first EMA copy.
    let (header, model) = load_checkpoint(&a.join("checkpoints/step-00000007.ckpt"), &cpu()).unwrap();
    assert_eq!(header.model, cfg.model);
    assert!(header.extra["diffusion"].is_object());
    match model {
        diffusion_models::checkpoint::AnyModel::Unet(u) => {
            assert_eq!(params(&u), params(&full.trainer.ema[0]));
        }
        other => panic!("expected a UNet, got {other:?}"),
    }
}

#[test]
fn non_finite_loss_stops_with_a_diagnostic_and_keeps_the_checkpoint() {
    let mut cfg = tiny();
    cfg.steps = 6;
    let dir = temp_dir("nan");
    let err = train(cfg, RunOptions { inject_nan_at_step: Some(3), ..opts(&dir) }).unwrap_err();
    match &err {
        TrainError::NonFinite { step, detail, last_checkpoint, .. } => {
            assert_eq!(*step, 3);
            assert_eq!(*last_checkpoint, 2);
            assert!(detail.contains("timesteps"), "{detail}");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("step 3") && msg.contains("intact"), "{msg}");
    let ckpts = list_checkpoints(&dir.join("checkpoints"));
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2]);
    let good = load_training_checkpoint(&ckpts[0].1).unwrap();
    assert_eq!(good.state.step, 2);
}

#[test]
fn corrupt_or_truncated_checkpoints_are_reported_and_skipped() {
    let mut cfg = tiny();
    cfg.steps = 4;
    let dir = temp_dir("corrupt");
    train(cfg.clone(), opts(&dir)).unwrap();
    let newest = dir.join("checkpoints/step-00000004.ckpt");
    let bytes = std::fs::read(&newest).unwrap();
    // Truncated: an explicit --resume PATH fails and names the file and the problem.
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let err =
        train(cfg.clone(), RunOptions { resume: Resume::Path(newest.clone()), ..opts(&dir) }).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("step-00000004.ckpt") && msg.contains("truncated"), "{msg}");
    // Bit rot: the checksum catches it.
    let mut flipped = bytes.clone();
    let mid = flipped.len() - 100;
    flipped[mid] ^= 0x40;
    std::fs::write(&newest, &flipped).unwrap();
    let msg = load_training_checkpoint(&newest).unwrap_err().to_string();
    assert!(msg.contains("checksum"), "{msg}");
    // --resume auto falls back to the previous, intact checkpoint and finishes the run.
    cfg.steps = 6;
    let done = train(cfg, RunOptions { resume: Resume::Auto, ..opts(&dir) }).unwrap();
    assert_eq!(done.resumed_from, Some(2));
    assert_eq!(done.steps_done, 6);
}

#[test]
fn a_changed_config_is_refused_on_resume() {
    let mut cfg = tiny();
    cfg.steps = 2;
    let dir = temp_dir("changed");
    train(cfg.clone(), opts(&dir)).unwrap();
    cfg.steps = 4;
    cfg.optim.lr *= 2.0;
    let err = train(cfg, RunOptions { resume: Resume::Auto, ..opts(&dir) }).unwrap_err();
    assert!(err.to_string().contains("config differs"), "{err}");
}

#[test]
fn loss_decreases_on_the_swiss_roll() {
    let mut cfg = TrainConfig::preset("tiny-mlp").unwrap();
    cfg.steps = 300;
    cfg.batch_size = 128;
    cfg.checkpoint_every = 150;
    cfg.optim.lr = 3e-3;
    let dir = temp_dir("decrease");
    train(cfg, opts(&dir)).unwrap();
    let rows = read_metrics(&dir.join("metrics.csv")).unwrap();
    let train_rows: Vec<f64> = rows.iter().filter(|r| r.split == "train").map(|r| r.loss).collect();
    assert_eq!(train_rows.len(), 300);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&train_rows[..30]), mean(&train_rows[270..]));
    assert!(last < 0.7 * first, "loss did not decrease: {first} → {last}");
    // The held-out loss is logged at each checkpoint and falls too.
    let valid: Vec<f64> = rows.iter().filter(|r| r.split == "valid").map(|r| r.loss).collect();
    assert_eq!(valid.len(), 2);
}

#[test]
fn importance_sampler_leaves_uniform_after_warm_up() {
    let mut cfg = tiny();
    cfg.process.schedule = diffusion_core::BetaSchedule::Cosine { num_timesteps: 4 };
    cfg.timestep_sampler = TimestepSamplerKind::LossSecondMoment;
    cfg.batch_size = 8;
    cfg.steps = 2;
    cfg.checkpoint_every = 1;
    let dir = temp_dir("importance");
    train(cfg.clone(), opts(&dir)).unwrap();
    // 16 draws over T = 4 cannot fill 10 losses per t: still uniform.
    let early = load_training_checkpoint(&dir.join("checkpoints/step-00000002.ckpt")).unwrap();
    assert!(!early.state.timestep_sampler.warmed_up());
    cfg.steps = 12;
    train(cfg, RunOptions { resume: Resume::Auto, ..opts(&dir) }).unwrap();
    let late = load_training_checkpoint(&dir.join("checkpoints/step-00000012.ckpt")).unwrap();
    assert!(late.state.timestep_sampler.warmed_up(), "96 draws over 4 timesteps must warm the sampler up");
}

/// Every objective trains: finite, non-zero gradient norms and finite losses for ε / x_0 / v
/// with L_simple, L_hybrid (learned range) and L_VLB (learned).
#[test]
fn every_objective_gives_finite_gradients() {
    let objectives = [
        (ModelMean::Epsilon, ModelVariance::FixedSmall, LossKind::Mse),
        (ModelMean::StartX, ModelVariance::FixedLarge, LossKind::Mse),
        (ModelMean::Velocity, ModelVariance::FixedSmall, LossKind::Mse),
        (ModelMean::PreviousX, ModelVariance::FixedSmall, LossKind::Mse),
        (ModelMean::Epsilon, ModelVariance::LearnedRange, LossKind::RescaledMse),
        (ModelMean::Epsilon, ModelVariance::Learned, LossKind::RescaledKl),
        (ModelMean::Epsilon, ModelVariance::LearnedRange, LossKind::Kl),
    ];
    for (mean, variance, loss) in objectives {
        let mut cfg = tiny();
        cfg.steps = 2;
        cfg.process.config = DiffusionConfig { mean, variance, loss, ..Default::default() };
        if let ModelSpec::Unet(u) = &mut cfg.model {
            u.out_channels = if variance.is_learned() { 6 } else { 3 };
        }
        let dir = temp_dir("objective");
        train(cfg, opts(&dir)).unwrap();
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let trained: Vec<&serde_json::Value> = rows.iter().filter(|r| r["split"] == "train").collect();
        assert_eq!(trained.len(), 2);
        for r in trained {
            let g = r["grad_norm"].as_f64().unwrap();
            let l = r["loss"].as_f64().unwrap();
            assert!(g.is_finite() && g > 0.0, "{mean:?}/{variance:?}/{loss:?}: grad norm {g}");
            assert!(l.is_finite(), "{mean:?}/{variance:?}/{loss:?}: loss {l}");
            assert_eq!(r["vb"].is_null(), !(variance.is_learned() || loss.is_vb()), "{r}");
        }
    }
}

/// Gradient accumulation over microbatches computes the full batch's gradient: one step with
/// batch 4 in microbatches of 1 gives the weights of one step with the whole batch.
#[test]
fn microbatches_accumulate_to_the_full_batch_gradient() {
    let mut cfg = tiny();
    cfg.steps = 1;
    cfg.checkpoint_every = 1;
    cfg.timestep_sampler = TimestepSamplerKind::Uniform;
    let whole = train(cfg.clone(), opts(&temp_dir("whole"))).unwrap();
    cfg.microbatch = Some(1);
    let micro = train(cfg, opts(&temp_dir("micro"))).unwrap();
    let (a, b) = (params(&whole.trainer.net), params(&micro.trainer.net));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "weights differ by {worst}");
}

#[test]
fn invalid_configs_name_the_problem() {
    let mut cfg = tiny();
    cfg.microbatch = Some(3);
    assert!(cfg.validate().unwrap_err().to_string().contains("microbatch 3 must divide batch_size 4"));
    let mut cfg = tiny();
    cfg.process.config.variance = ModelVariance::FixedSmall;
    assert!(cfg.validate().unwrap_err().to_string().contains("out_channels is 6 but the process needs 3"));
    let mut cfg = tiny();
    cfg.data = "swissroll".into();
    let err = train(cfg, opts(&temp_dir("baddata"))).unwrap_err();
    assert!(err.to_string().contains("2-D points"), "{err}");
    let mut cfg = tiny();
    cfg.data = "mnist:/nonexistent/mnist".into();
    let err = train(cfg, opts(&temp_dir("missing"))).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/mnist"), "{err}");
    // Zero terminal SNR: a denoiser must predict v; a classifier only noises, so its config's
    // mean does not matter.
    let mut cfg = tiny();
    cfg.process.zero_terminal_snr = true;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("zero terminal SNR") && err.contains("mean is epsilon"), "{err}");
    let mut clf = diffusion_train::ClassifierConfig::preset("tiny").unwrap();
    clf.process.zero_terminal_snr = true;
    assert_eq!(clf.process.config.mean, ModelMean::Epsilon);
    clf.validate().unwrap();
}

#[test]
fn every_preset_is_valid() {
    for name in diffusion_train::config::PRESETS {
        TrainConfig::preset(name).unwrap().validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in diffusion_train::classifier::CLASSIFIER_PRESETS {
        diffusion_train::ClassifierConfig::preset(name)
            .unwrap()
            .validate()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// A preset that anneals its learning rate does so over the whole run: with `lr_anneal_steps`
/// below `steps`, the rate is 0 for the rest and those steps train nothing (the swissroll preset
/// once annealed over 3,000 of its 10,000 steps and did not learn the roll).
#[test]
fn every_preset_anneals_over_its_whole_run() {
    for name in diffusion_train::config::PRESETS {
        let cfg = TrainConfig::preset(name).unwrap();
        let anneal = cfg.optim.lr_anneal_steps;
        assert!(
            anneal == 0 || anneal >= cfg.steps,
            "{name}: lr anneals to 0 at step {anneal} of {}",
            cfg.steps
        );
    }
}

/// `--devices`: burn's multi-device strategy splits every microbatch between the devices (here
/// two CPU devices) and the run completes with every checkpoint.
#[test]
fn data_parallel_over_two_devices() {
    let mut cfg = tiny();
    cfg.steps = 4;
    let dir = temp_dir("multi");
    let done = train(cfg, RunOptions { devices: vec![cpu(), cpu()], ..opts(&dir) }).unwrap();
    assert_eq!(done.steps_done, 4);
    assert_eq!(
        list_checkpoints(&dir.join("checkpoints")).iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![2, 4]
    );
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let halves: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["split"] == "train")
        .map(|r| r["examples"].as_u64().unwrap())
        .collect();
    assert_eq!(halves, vec![2; 8], "each of the 4 steps is two halves of the batch of 4");
}

/// Global-norm clipping scales every gradient by the same factor, to the given norm.
#[test]
fn global_norm_clipping() {
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::optim::GradientsParams;
    use burn::tensor::{Distribution, Tensor};
    use diffusion_train::trainer::{clip_grad_norm, global_grad_norm};

    let ad = cpu().autodiff();
    let lin = LinearConfig::new(3, 2).init(&ad);
    let x = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &ad);
    let loss = lin.forward(x).mul_scalar(10.0).square().sum();
    let mut grads = GradientsParams::from_grads(loss.backward(), &lin);
    let before = global_grad_norm(&lin, &grads);
    let w = grads.get::<2>(lin.weight.id).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    // The norm is the L2 norm of every gradient entry together.
    let b = grads
        .get::<1>(lin.bias.as_ref().unwrap().id)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let direct = w.iter().chain(&b).map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    assert!((before - direct).abs() < 1e-4 * direct, "{before} vs {direct}");
    assert!(before > 1.0);
    let reported = clip_grad_norm(&lin, &mut grads, 1.0);
    assert_eq!(reported, before);
    let after = global_grad_norm(&lin, &grads);
    assert!((after - 1.0).abs() < 1e-4, "clipped norm {after}");
    let w2 = grads.get::<2>(lin.weight.id).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    for (a, c) in w.iter().zip(&w2) {
        assert!((f64::from(*c) - f64::from(*a) / before).abs() < 1e-5, "direction changed");
    }
    let _ = lin.num_params();
}

/// The classifier learns the shapes: held-out top-1 accuracy well above chance (25 %) after about a
/// hundred steps on clean 16×16 images (the `shapes` classifier preset).
#[test]
fn classifier_learns_the_shapes() {
    let mut cfg = diffusion_train::ClassifierConfig::preset("shapes").unwrap();
    cfg.noised = false;
    cfg.steps = 120;
    cfg.batch_size = 32;
    cfg.checkpoint_every = 120;
    cfg.valid_size = 64;
    let dir = temp_dir("classifier");
    let done = diffusion_train::train_classifier(cfg, opts(&dir)).unwrap();
    let acc = done.final_accuracy.unwrap();
    // Chance is 0.25 ± 0.054 over 64 held-out images: 0.4 is nearly 3 standard deviations above.
    assert!(acc > 0.4, "held-out accuracy {acc}");
    // Its checkpoint is a classifier checkpoint.
    let (header, _) = load_checkpoint(done.last_checkpoint.as_ref().unwrap(), &cpu()).unwrap();
    assert!(matches!(header.model, ModelSpec::Classifier(_)));
}
