//! Opening checkpoints from the library: the process comes from the header, typed; a checkpoint
//! without one, a process that does not fit the network, a directory or a classifier are refused
//! with the reason.

use burn::tensor::Device;
use diffusion_core::{BetaSchedule, DiffusionConfig, ModelVariance, ProcessRecord, ProcessSpec};
use diffusion_models::checkpoint::{ModelSpec, save_checkpoint};
use diffusion_models::{EncoderUNetConfig, MlpConfig};
use diffusion_sample::{open_classifier, open_denoiser, open_denoiser_as};

fn spec(variance: ModelVariance, steps: usize) -> ProcessSpec {
    ProcessSpec::new(
        BetaSchedule::Cosine { num_timesteps: steps },
        DiffusionConfig { variance, ..Default::default() },
    )
}

#[test]
fn the_process_is_read_from_the_header_and_checked_against_the_network() {
    let dev = Device::flex();
    let dir = std::env::temp_dir().join(format!("diffusion-sample-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = MlpConfig::new();
    let mlp = cfg.init(&dev);
    let write = |name: &str, record: Option<ProcessSpec>| {
        let path = dir.join(name);
        let extra = serde_json::to_value(ProcessRecord { diffusion: record }).unwrap();
        save_checkpoint(&path, &ModelSpec::Mlp(cfg.clone()), &mlp, extra).unwrap();
        path
    };
    // Recorded: that process, exactly.
    let path = write("recorded.ckpt", Some(spec(ModelVariance::FixedLarge, 77)));
    let ckpt = open_denoiser(&path, &dev, None).unwrap();
    assert_eq!(ckpt.process, spec(ModelVariance::FixedLarge, 77));
    assert_eq!(ckpt.diffusion.num_timesteps(), 77);
    assert!(ckpt.metadata.process_recorded);
    // A fallback does not override a recorded process; `open_denoiser_as` does.
    let other = spec(ModelVariance::FixedSmall, 20);
    assert_eq!(open_denoiser(&path, &dev, Some(&other)).unwrap().diffusion.num_timesteps(), 77);
    let as_other = open_denoiser_as(&path, &dev, &other).unwrap();
    assert_eq!((as_other.diffusion.num_timesteps(), as_other.metadata.process_recorded), (20, false));

    // None recorded: an error naming what to give, or the fallback.
    let bare = write("bare.ckpt", None);
    let err = open_denoiser(&bare, &dev, None).unwrap_err().to_string();
    assert!(err.contains("records no diffusion process") && err.contains("--variance"), "{err}");
    assert_eq!(open_denoiser(&bare, &dev, Some(&other)).unwrap().diffusion.num_timesteps(), 20);

    // A learned variance needs 2C output channels: the MLP outputs C = 2.
    let err = open_denoiser_as(&path, &dev, &spec(ModelVariance::LearnedRange, 20)).unwrap_err().to_string();
    assert!(err.contains("outputs 2 channels") && err.contains("needs 4"), "{err}");

    // A directory and a classifier are not denoisers.
    let err = open_denoiser(&dir, &dev, None).unwrap_err().to_string();
    assert!(err.contains("is a directory"), "{err}");
    let clf_path = dir.join("clf.ckpt");
    let clf_cfg = EncoderUNetConfig::tiny(3);
    save_checkpoint(
        &clf_path,
        &ModelSpec::Classifier(clf_cfg.clone()),
        &clf_cfg.try_init(&dev).unwrap(),
        serde_json::Value::Null,
    )
    .unwrap();
    let err = open_denoiser(&clf_path, &dev, None).unwrap_err().to_string();
    assert!(err.contains("holds a classifier"), "{err}");
    assert_eq!(open_classifier(&clf_path, &dev, 2.0).unwrap().num_classes(), 3);
    let err = open_classifier(&path, &dev, 2.0).unwrap_err().to_string();
    assert!(err.contains("not a classifier"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Bad step arguments are typed errors naming the problem, never panics.
#[test]
fn bad_step_inputs_are_errors() {
    use burn::tensor::{Distribution, Tensor};
    use diffusion_core::GaussianDiffusion;
    use diffusion_sample::step::{StepOptions, Timesteps, ancestral_step, ddim_step};
    let dev = Device::flex();
    let d = GaussianDiffusion::from_schedule(&BetaSchedule::Cosine { num_timesteps: 10 }, Default::default())
        .unwrap();
    let x = Tensor::<4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
    let opts = StepOptions::default();
    let err = |r: Result<_, diffusion_sample::SampleError>| {
        r.map(|_: diffusion_sample::step::AncestralStep<4>| ()).unwrap_err().to_string()
    };
    let e = err(ancestral_step(&d, x.clone(), 10, x.clone(), Some(x.clone()), &opts));
    assert!(e.contains("timestep 10 is out of range") && e.contains("10 steps"), "{e}");
    let e = err(ancestral_step(&d, x.clone(), 5, x.clone(), None, &opts));
    assert!(e.contains("needs a noise tensor"), "{e}");
    let e = err(ancestral_step(
        &d,
        x.clone(),
        Timesteps::PerSample(vec![1, 2, 3]),
        x.clone(),
        Some(x.clone()),
        &opts,
    ));
    assert!(e.contains("3 timesteps were given for a batch of 2"), "{e}");
    let wide = Tensor::<4>::zeros([2, 6, 4, 4], &dev);
    let e = err(ancestral_step(&d, x.clone(), 5, wide, Some(x.clone()), &opts));
    assert!(e.contains("the model output has shape [2, 6, 4, 4], expected [2, 3, 4, 4]"), "{e}");
    let small = Tensor::<4>::zeros([2, 3, 2, 2], &dev);
    let e = err(ancestral_step(&d, x.clone(), 5, x.clone(), Some(small), &opts));
    assert!(e.contains("the noise has shape"), "{e}");
    // At t = 0 the ancestral step needs no noise; DDIM with η = 0 never does.
    assert!(ancestral_step(&d, x.clone(), 0, x.clone(), None, &opts).is_ok());
    assert!(ddim_step(&d, x.clone(), 5, x.clone(), 0.0, None, &opts).is_ok());
    let e = ddim_step(&d, x.clone(), 5, x.clone(), -1.0, None, &opts).unwrap_err().to_string();
    assert!(e.contains("η must be"), "{e}");
}

/// Classifier guidance with DPM-Solver++ is refused, not silently ignored.
#[test]
fn guidance_with_dpm_solver_is_an_error() {
    use burn::tensor::Tensor;
    use diffusion_core::GaussianDiffusion;
    use diffusion_sample::dpm_solver::DpmAlgorithm;
    use diffusion_sample::{Guidance, Method, NoiseSource, SampleOptions, sample};
    let dev = Device::flex();
    let d = GaussianDiffusion::from_schedule(&BetaSchedule::Cosine { num_timesteps: 10 }, Default::default())
        .unwrap();
    let model = |x: Tensor<2>, _t: Tensor<1>| x.zeros_like();
    let guidance = |x: Tensor<2>, _t: Tensor<1>| x.zeros_like();
    let method = Method::DpmSolver { order: 2, algorithm: DpmAlgorithm::DpmSolverPp, schedule: None };
    let run = |g: Option<&dyn Guidance<2>>| {
        sample(&d, &model, &[0, 1], [1, 2], &NoiseSource::new(0), method, &SampleOptions::default(), g, &dev)
    };
    let err = run(Some(&guidance)).unwrap_err().to_string();
    assert!(err.contains("not available with DPM-Solver++"), "{err}");
    assert!(run(None).is_ok());
}
