//! Every single step, guidance transform and loop against the reference implementations, value
//! by value, with the noise given explicitly.
//!
//! Golden values: `fixtures/steps.json` and `fixtures/network_steps.json`, written by
//! `tools/gen_sampler_reference.py`, which calls openai/improved-diffusion@1bc7bbb (`p_sample`,
//! `ddim_sample`, `ddim_reverse_sample`, `p_sample_loop`, `ddim_sample_loop`) and
//! openai/guided-diffusion@22e0df8 (`condition_mean`, `condition_score`, guided `p_sample` /
//! `ddim_sample`) with `torch.randn_like` patched to return stored noise, a stand-in model that
//! returns a stored output (or a closed-form network, for the loops), and — for the network
//! cases — guided-diffusion's own UNet and classifier with the weights of
//! `diffusion-models/tests/it/fixtures/`. Everything here uses the crates' public API only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::{
    BetaSchedule, DiffusionConfig, GaussianDiffusion, ModelMean, ModelVariance, ProcessRecord, ProcessSpec,
    TimestepScaling,
};
use diffusion_models::checkpoint::{
    ModelSpec, import_pytorch_classifier, import_pytorch_unet, save_checkpoint,
};
use diffusion_models::{EncoderUNetConfig, Pool, UNetConfig};
use diffusion_sample::checkpoint::DenoiserNetwork;
use diffusion_sample::step::{
    StepOptions, ancestral_step, condition_mean, condition_score, ddim_reverse_step, ddim_step, model_output,
    p_mean_variance,
};
use diffusion_sample::{
    Guidance, LoopNoise, Method, SampleOptions, Timesteps, open_classifier, open_denoiser, sample_with,
};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures").join(name)
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

static STEPS: LazyLock<Value> = LazyLock::new(|| load("steps.json"));
static NETWORK: LazyLock<Value> = LazyLock::new(|| load("network_steps.json"));

fn device() -> Device {
    Device::flex()
}

fn tensor<const D: usize>(v: &Value, device: &Device) -> Tensor<D> {
    let shape: Vec<usize> =
        v["shape"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).collect();
    let data: Vec<f32> = v["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// A case's tensor argument: `null`, or the name of a shared input.
fn input<const D: usize>(root: &Value, case: &Value, key: &str, device: &Device) -> Option<Tensor<D>> {
    case[key].as_str().map(|name| tensor(&root["inputs"][name], device))
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// |a − b| ≤ atol + rtol |b| everywhere (f32 arithmetic on both sides; x̂_0 after guidance
/// reaches 1e4, hence the relative part).
fn assert_close(got: Vec<f32>, want: &Value, atol: f32, what: &str) {
    let want: Vec<f32> =
        want["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= atol + 1e-5 * b.abs(), "{what}: element {k}: ours {a}, reference {b}");
    }
}

fn process(case: &Value) -> GaussianDiffusion {
    let steps = case["steps"].as_u64().unwrap() as usize;
    let schedule = BetaSchedule::named(case["schedule"].as_str().unwrap(), steps).unwrap();
    let config = DiffusionConfig {
        mean: match case["mean_type"].as_str().unwrap() {
            "epsilon" => ModelMean::Epsilon,
            "start_x" => ModelMean::StartX,
            other => panic!("mean type {other}"),
        },
        variance: match case["var_type"].as_str().unwrap() {
            "fixed_small" => ModelVariance::FixedSmall,
            "fixed_large" => ModelVariance::FixedLarge,
            "learned_range" => ModelVariance::LearnedRange,
            other => panic!("variance {other}"),
        },
        timestep_scaling: if case["rescale_timesteps"].as_bool().unwrap() {
            TimestepScaling::Rescaled1000
        } else {
            TimestepScaling::Original
        },
        ..Default::default()
    };
    let d = GaussianDiffusion::from_schedule(&schedule, config).unwrap();
    match case["respace"].as_str() {
        Some(spec) => d.respace_spec(spec).unwrap(),
        None => d,
    }
}

fn timesteps(case: &Value) -> Vec<usize> {
    case["t"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect()
}

fn name(case: &Value) -> String {
    format!(
        "{} {} T={} respace={} rescale={} {} {} clip={} eta={} t={:?}",
        case["op"].as_str().unwrap(),
        case["schedule"].as_str().unwrap(),
        case["steps"],
        case["respace"],
        case["rescale_timesteps"],
        case["mean_type"].as_str().unwrap(),
        case["var_type"].as_str().unwrap(),
        case["clip"],
        case["eta"],
        timesteps(case)
    )
}

/// A guidance that returns a stored gradient and checks the timesteps it is called with.
struct Stored {
    grad: Tensor<4>,
    expected_t: Vec<f32>,
}

impl Guidance<4> for Stored {
    fn gradient(&self, _x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        if !self.expected_t.is_empty() {
            assert_eq!(values(t), self.expected_t, "the guidance must see the reference's cond_fn timesteps");
        }
        self.grad.clone()
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Runs one case's op with `model_out` and compares every output the reference stored.
fn check_case(
    root: &Value,
    case: &Value,
    model_out: Tensor<4>,
    guidance: Option<&dyn Guidance<4>>,
    atol: f32,
) {
    let dev = device();
    let what = name(case);
    let d = process(case);
    let t = timesteps(case);
    let x: Tensor<4> = input(root, case, "x", &dev).unwrap();
    let noise: Option<Tensor<4>> = input(root, case, "noise", &dev);
    let clip = case["clip"].as_bool().unwrap();
    let tt =
        Tensor::<1, Int>::from_data(TensorData::new(t.iter().map(|&v| v as i64).collect(), [t.len()]), &dev);
    assert_eq!(values(d.model_timesteps(tt)), floats(&case["model_t"]), "{what}: model timesteps");
    let out = &case["out"];
    let ts = Timesteps::PerSample(t.clone());
    let plain = StepOptions { clip_denoised: clip, guidance: None };
    let guided = StepOptions { clip_denoised: clip, guidance };
    let check =
        |key: &str, got: Tensor<4>| assert_close(values(got), &out[key], atol, &format!("{what}: {key}"));
    match case["op"].as_str().unwrap() {
        "p_sample" | "guided_p_sample" => {
            let opts = if case["op"] == "p_sample" { &plain } else { &guided };
            let s = ancestral_step(&d, x, ts, model_out, noise, opts).unwrap();
            check("sample", s.sample);
            check("pred_xstart", s.pred_x0);
            if out.get("mean").is_some() {
                check("mean", s.mean);
                check("variance", s.variance);
                check("log_variance", s.log_variance);
            }
        }
        "ddim_sample" | "guided_ddim_sample" => {
            let opts = if case["op"] == "ddim_sample" { &plain } else { &guided };
            let eta = case["eta"].as_f64().unwrap();
            let s = ddim_step(&d, x, ts, model_out, eta, noise, opts).unwrap();
            check("sample", s.sample);
            check("pred_xstart", s.pred_x0);
        }
        "ddim_reverse_sample" => {
            let s = ddim_reverse_step(&d, x, ts, model_out, clip).unwrap();
            check("sample", s.sample);
            check("pred_xstart", s.pred_x0);
        }
        op @ ("condition_mean" | "condition_score") => {
            let g = guidance.expect("a guidance case");
            let grad = diffusion_sample::step::guidance_gradient(&d, g, x.clone(), ts.clone()).unwrap();
            let p = p_mean_variance(&d, x.clone(), ts.clone(), model_out, clip).unwrap();
            if op == "condition_mean" {
                check("mean", condition_mean(&p, grad).unwrap());
            } else {
                let c = condition_score(&d, &p, x, ts, grad).unwrap();
                check("mean", c.mean);
                check("pred_xstart", c.pred_x0);
                check("variance", c.variance);
                check("log_variance", c.log_variance);
            }
        }
        other => panic!("unknown op {other}"),
    }
}

/// Every case of improved-/guided-diffusion's single steps: p_sample (fixed small/large,
/// learned range; ε and x_0; clip on/off), ddim_sample (η 0, 0.5, 1), ddim_reverse_sample,
/// condition_mean, condition_score, guided p_sample and ddim_sample — at t = 0, 1, middle, last
/// and mixed per-sample t, on plain and respaced (`ddim50`, `100`) linear and cosine processes,
/// with and without rescaled timesteps.
#[test]
fn every_single_step_equals_the_reference() {
    let dev = device();
    let root = &*STEPS;
    let cases = root["cases"].as_array().unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for case in cases {
        let model_out: Tensor<4> = input(root, case, "model_output", &dev).unwrap();
        let stored = input(root, case, "grad", &dev).map(|grad| Stored {
            grad,
            expected_t: case["cond_t"].as_array().map(|_| floats(&case["cond_t"])).unwrap_or_default(),
        });
        check_case(root, case, model_out, stored.as_ref().map(|g| g as &dyn Guidance<4>), 1e-5);
        *counts.entry(case["op"].as_str().unwrap().to_string()).or_default() += 1;
    }
    // None skipped: every op of the generator is here, with its full count.
    let expected = [
        ("condition_mean", 320),
        ("condition_score", 320),
        ("ddim_reverse_sample", 320),
        ("ddim_sample", 640),
        ("guided_ddim_sample", 640),
        ("guided_p_sample", 320),
        ("p_sample", 320),
    ];
    let got: Vec<(&str, usize)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(got, expected);
}

/// The reference's per-step noise, by the order of its `randn_like` calls (one per level, from
/// the last level down).
struct CallOrder<'a> {
    x_t: Tensor<4>,
    noises: &'a Value,
    num_t: usize,
    device: Device,
}

impl LoopNoise<4> for CallOrder<'_> {
    fn initial(&self) -> Tensor<4> {
        self.x_t.clone()
    }

    fn step(&self, key: u64) -> Tensor<4> {
        let (level, inner) = ((key >> 20) as usize, key & 0xF_FFFF);
        assert_eq!(inner, 0, "DDPM and DDIM draw one noise per level");
        let call = self.num_t - 1 - level;
        let shape: Vec<usize> =
            self.noises["shape"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).collect();
        let per: usize = shape[1..].iter().product();
        let data: Vec<f32> = self.noises["data"].as_array().unwrap()[call * per..(call + 1) * per]
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        Tensor::from_data(TensorData::new(data, shape[1..].to_vec()), &self.device)
    }
}

/// The loops' stand-in network, in closed form on both sides: ε part 0.9 x + 0.0003 s, variance
/// part tanh(0.5 x − 0.0002 s) for a learned variance (s: the model timestep).
fn stand_in(learned: bool) -> impl Fn(Tensor<4>, Tensor<1>) -> Tensor<4> {
    move |x: Tensor<4>, s: Tensor<1>| {
        let b = x.dims()[0];
        let s4: Tensor<4> = s.reshape([b, 1, 1, 1]);
        let eps = x.clone().mul_scalar(0.9) + s4.clone().mul_scalar(0.0003);
        if learned {
            Tensor::cat(vec![eps, (x.mul_scalar(0.5) - s4.mul_scalar(0.0002)).tanh()], 1)
        } else {
            eps
        }
    }
}

/// improved-diffusion's `p_sample_loop` and `ddim_sample_loop` (η 0 and 0.5), whole chains with
/// the reference's per-step noise, against our loop (`sample_with`), final sample and the
/// recorded intermediate samples.
#[test]
fn whole_loops_equal_the_reference() {
    let dev = device();
    let root = &*STEPS;
    let loops = root["loops"].as_array().unwrap();
    assert_eq!(loops.len(), 15);
    for case in loops {
        let d = process(case);
        let what = format!(
            "{} eta={} {} {} T={} respace={} {}",
            case["sampler"].as_str().unwrap(),
            case["eta"],
            case["schedule"].as_str().unwrap(),
            case["var_type"].as_str().unwrap(),
            case["steps"],
            case["respace"],
            case["rescale_timesteps"]
        );
        let x_t: Tensor<4> = input(root, case, "x_T", &dev).unwrap();
        let noise = CallOrder {
            x_t: x_t.clone(),
            noises: &root["inputs"][case["noises"].as_str().unwrap()],
            num_t: d.num_timesteps(),
            device: dev.clone(),
        };
        let method = match case["sampler"].as_str().unwrap() {
            "ddpm" => Method::Ddpm,
            _ => Method::Ddim { eta: case["eta"].as_f64().unwrap() },
        };
        let model = stand_in(case["var_type"] == "learned_range");
        let options = SampleOptions { clip_denoised: case["clip"].as_bool().unwrap(), record_every: Some(1) };
        let out = sample_with(&d, &model, x_t, &noise, method, &options, None).unwrap();
        assert_close(values(out.sample), &case["sample"], 1e-5, &format!("{what}: final sample"));
        for p in case["progress"].as_array().unwrap() {
            let k = p["step"].as_u64().unwrap() as usize;
            let (t, x) = &out.trajectory[k];
            assert_eq!(*t as u64, p["t"].as_u64().unwrap(), "{what}: step {k}");
            assert_close(values(x.clone()), &p["sample"], 1e-5, &format!("{what}: sample after step {k}"));
        }
    }
}

fn fixture_models() -> Value {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffusion-models/tests/it/fixtures/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn models_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffusion-models/tests/it/fixtures").join(name)
}

/// A trained checkpoint opened as a library user would (a diffusion-rs checkpoint holding
/// guided-diffusion's UNet and classifier weights and the process), stepped from our own x_t with
/// our own noise: the network output, one DDPM step, one DDIM step, `condition_mean`,
/// `condition_score` (at t = 0 too) and the guided steps equal guided-diffusion's, on the plain
/// and the `ddim50` process.
#[test]
fn a_checkpoint_opened_from_the_library_steps_like_the_reference() {
    let dev = device();
    let root = &*NETWORK;
    let models = fixture_models();
    let config_of = |kind: &str, name: &str| {
        models[kind].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone()
    };
    let unet_cfg: UNetConfig =
        UNetConfig::from_json(&config_of("unets", "unet_cond_legacy")["config"]).unwrap();
    let clf_case = config_of("classifiers", "classifier_adaptive");
    let clf_unet = UNetConfig::from_json(&clf_case["config"]).unwrap();
    let pool: Pool = serde_json::from_value(clf_case["pool"].clone()).unwrap();
    let clf_cfg = EncoderUNetConfig::new(clf_unet).with_pool(pool);
    let dir = std::env::temp_dir().join(format!("diffusion-sample-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (unet_path, clf_path) = (dir.join("unet.ckpt"), dir.join("classifier.ckpt"));
    let spec = ProcessSpec::new(
        BetaSchedule::Linear { num_timesteps: 1000 },
        DiffusionConfig { variance: ModelVariance::LearnedRange, ..Default::default() },
    );
    let unet = import_pytorch_unet(&models_fixture("unet_cond_legacy.pt"), &unet_cfg, &dev).unwrap();
    let extra = serde_json::to_value(ProcessRecord { diffusion: Some(spec) }).unwrap();
    save_checkpoint(&unet_path, &ModelSpec::Unet(unet_cfg), &unet, extra).unwrap();
    let clf = import_pytorch_classifier(&models_fixture("classifier_adaptive.pt"), &clf_cfg, &dev).unwrap();
    save_checkpoint(&clf_path, &ModelSpec::Classifier(clf_cfg), &clf, Value::Null).unwrap();

    let ckpt = open_denoiser(&unet_path, &dev, None).unwrap();
    assert!(ckpt.metadata.process_recorded);
    assert!(matches!(ckpt.network, DenoiserNetwork::Unet(_)));
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    let mut at_zero = 0;
    for case in root["cases"].as_array().unwrap() {
        let d = process(case);
        assert_eq!(
            ckpt.diffusion.tables(),
            process_plain(case).tables(),
            "the checkpoint records the process"
        );
        let y: Vec<i64> = case["y"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let labels = Tensor::<1, Int>::from_data(TensorData::new(y, [2]), &dev);
        let net = ckpt.network.conditional(Some(labels.clone())).unwrap();
        let x: Tensor<4> = input(root, case, "x", &dev).unwrap();
        let t = Timesteps::PerSample(timesteps(case));
        let ours = model_output(&d, &net, x.clone(), t.clone()).unwrap();
        let what = name(case);
        assert_close(
            values(ours.clone()),
            &root["inputs"][case["model_output"].as_str().unwrap()],
            1e-5,
            &format!("{what}: UNet output"),
        );
        let scale = case["classifier_scale"].as_f64().unwrap();
        let guidance = open_classifier(&clf_path, &dev, scale).unwrap();
        let g = guidance.for_labels(labels);
        if let Some(grad_key) = case["grad"].as_str() {
            let grad = diffusion_sample::step::guidance_gradient(&d, &g, x, t).unwrap();
            // Through a network and its backward pass in f32 (different summation orders from
            // PyTorch): within 1e-4 of the gradient's scale; the steps below are held to 1e-5.
            let want = &root["inputs"][grad_key];
            let scale = floats(&want["data"]).iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_close(values(grad), want, 1e-4 * scale, &format!("{what}: classifier gradient"));
        }
        // The step functions on the reference's own network output and gradient: 1e-5.
        let reference_out: Tensor<4> = input(root, case, "model_output", &dev).unwrap();
        let stored = input(root, case, "grad", &dev).map(|grad| Stored { grad, expected_t: Vec::new() });
        check_case(root, case, reference_out, stored.as_ref().map(|g| g as &dyn Guidance<4>), 1e-5);
        // End to end, our network and classifier: the output and gradient differences (f32
        // summation orders, ≈ 1e-7) are amplified by x̂_0's coefficient √(1/ᾱ_t) (158 at the
        // last linear step), so the bound is 1e-5 times that factor.
        let amplification =
            timesteps(case).iter().map(|&i| d.tables().sqrt_recip_alphas_cumprod[i]).fold(1.0f64, f64::max)
                as f32;
        check_case(root, case, ours, Some(&g), 1e-5 * amplification);
        *ops.entry(case["op"].as_str().unwrap().to_string()).or_default() += 1;
        at_zero += usize::from(timesteps(case).contains(&0));
    }
    assert_eq!(ops.values().sum::<usize>(), 80);
    assert!(
        ops.contains_key("p_sample")
            && ops.contains_key("ddim_sample")
            && ops.contains_key("condition_score")
    );
    assert!(at_zero > 0, "t = 0 is covered");
    std::fs::remove_dir_all(&dir).ok();
}

/// The process of a case without its respacing (what the checkpoint records).
fn process_plain(case: &Value) -> GaussianDiffusion {
    let mut c = case.clone();
    c["respace"] = Value::Null;
    process(&c)
}
