//! guided-diffusion's networks — the UNet with attention in both head orders, BigGAN up/down
//! sampling, a class embedding and a learned σ, and the noise-aware classifier with each pooling —
//! give guided-diffusion's outputs and gradients on the baseline and on every target.

use std::sync::LazyLock;

use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_models::checkpoint::{import_pytorch_classifier, import_pytorch_unet};
use diffusion_models::{EncoderUNetConfig, Pool, UNetConfig};
use diffusion_parity::{ParamGrad, Target, assert_close, baseline, param_grads, targets, track, values};
use serde_json::Value;

use crate::{fixture, floats, tensor_of};

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `tools/gen_gradient_reference.py`'s cases.
static GRADIENTS: LazyLock<Value> = LazyLock::new(|| json("gradients.json"));
/// `tools/gen_models_reference.py`'s forward passes.
static FORWARD: LazyLock<Value> = LazyLock::new(|| json("reference.json"));

/// A fixture network: a UNet or a classifier.
enum Net {
    Unet(diffusion_models::UNet),
    Classifier(diffusion_models::EncoderUNet),
}

impl Net {
    fn load(case: &Value, device: &Device) -> Self {
        let name = case["name"].as_str().unwrap();
        let path = fixture(&format!("{name}.pt"));
        let config: UNetConfig = UNetConfig::from_json(&case["config"]).unwrap();
        if case["pool"].is_null() {
            Self::Unet(import_pytorch_unet(&path, &config, device).unwrap_or_else(|e| panic!("{name}: {e}")))
        } else {
            let pool: Pool = serde_json::from_value(case["pool"].clone()).unwrap();
            let config = EncoderUNetConfig::new(config).with_pool(pool);
            Self::Classifier(
                import_pytorch_classifier(&path, &config, device).unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        }
    }

    fn track(self) -> Self {
        match self {
            Self::Unet(n) => Self::Unet(track(n)),
            Self::Classifier(n) => Self::Classifier(track(n)),
        }
    }

    fn forward<const D: usize>(&self, case: &Value, x: Tensor<4>) -> Tensor<D> {
        let device = x.device();
        let t = floats(&case["t"]);
        let n = t.len();
        let t = Tensor::<1>::from_data(TensorData::new(t, [n]), &device);
        let y = case["y"].as_array().map(|y| {
            let v: Vec<i64> = y.iter().map(|x| x.as_i64().unwrap()).collect();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device)
        });
        match self {
            Self::Unet(u) => u.forward(x, t, y).reshape(shape_of::<D>(case)),
            Self::Classifier(c) => c.forward(x, t).reshape(shape_of::<D>(case)),
        }
    }

    fn grads(&self, g: &burn::tensor::Gradients) -> Vec<ParamGrad> {
        match self {
            Self::Unet(n) => param_grads(n, g),
            Self::Classifier(n) => param_grads(n, g),
        }
    }
}

fn shape_of<const D: usize>(case: &Value) -> [i32; D] {
    let key = if case.get("target").is_some() { "target" } else { "out" };
    let s = case[key]["shape"].as_array().unwrap();
    assert_eq!(s.len(), D);
    std::array::from_fn(|i| s[i].as_i64().unwrap() as i32)
}

/// What a gradient case computes.
struct Computed {
    loss: f32,
    x_grad: Vec<f32>,
    params: Vec<ParamGrad>,
}

/// `mean((net(x, t, y) − target)²)` and its gradients, on `device` (the autodiff device over it).
fn compute(case: &Value, device: &Device) -> Computed {
    let ad = device.clone().autodiff();
    let net = Net::load(case, &ad).track();
    let x = tensor_of::<4>(&case["x"], &ad).require_grad();
    let loss = if case["pool"].is_null() {
        let out: Tensor<4> = net.forward(case, x.clone());
        (out - tensor_of::<4>(&case["target"], &ad)).square().mean()
    } else {
        let out: Tensor<2> = net.forward(case, x.clone());
        (out - tensor_of::<2>(&case["target"], &ad)).square().mean()
    };
    let grads = loss.backward();
    Computed {
        loss: values(loss.clone())[0],
        x_grad: values(x.grad(&grads).expect("x has a gradient")),
        params: net.grads(&grads),
    }
}

/// Checks `got` against the reference case: the loss, dL/dx, and every parameter's gradient
/// (each of ours matched to the reference's tensor with the same size and weight sum).
fn check(what: &str, got: &Computed, case: &Value) {
    let loss = case["loss"].as_f64().unwrap();
    assert!(
        (f64::from(got.loss) - loss).abs() <= 1e-5 * loss.abs().max(1e-3),
        "{what}: loss {} vs the reference's {loss}",
        got.loss
    );
    assert_close(&format!("{what}: dL/dx"), &got.x_grad, &floats(&case["x_grad"]["data"]), 2e-4);
    let reference: Vec<&Value> = case["params"].as_array().unwrap().iter().collect();
    assert_eq!(got.params.len(), reference.len(), "{what}: parameter tensors");
    let mut used = vec![false; reference.len()];
    // The whole gradient's norm: tensors whose own gradient is ~0 (a bias that GroupNorm
    // cancels, a time embedding whose contributions cancel) are judged on a hundredth of it,
    // not on their rounding noise.
    let total: f64 = reference.iter().map(|r| r["grad_sq"].as_f64().unwrap()).sum::<f64>().sqrt();
    let mut worst = (0f64, 0usize);
    for (i, p) in got.params.iter().enumerate() {
        let (j, r) = reference
            .iter()
            .enumerate()
            .filter(|(j, r)| !used[*j] && r["numel"].as_u64() == Some(p.numel as u64))
            .min_by(|a, b| {
                let d = |r: &Value| (r["sum"].as_f64().unwrap() - p.sum).abs();
                d(a.1).total_cmp(&d(b.1))
            })
            .unwrap_or_else(|| panic!("{what}: parameter {i} ({} values) has no counterpart", p.numel));
        let rsum = r["sum"].as_f64().unwrap();
        assert!(
            (rsum - p.sum).abs() <= 1e-4 * (1.0 + p.sum.abs()),
            "{what}: parameter {i} ({} values, Σw = {}) has no counterpart with the same weights",
            p.numel,
            p.sum
        );
        used[j] = true;
        let (gsq, gdw) = (r["grad_sq"].as_f64().unwrap(), r["grad_dot_w"].as_f64().unwrap());
        // Both statistics relative to the gradient's size (‖g‖, ‖g‖·‖w‖).
        let norm = gsq.sqrt().max(1e-2 * total);
        let e_sq = (p.grad_sq.sqrt() - gsq.sqrt()).abs() / norm;
        let e_dot = (p.grad_dot_w - gdw).abs() / (norm * p.sq.sqrt().max(1e-6));
        let e = e_sq.max(e_dot);
        if e > worst.0 {
            worst = (e, i);
        }
        assert!(
            e <= 1e-3,
            "{what}: parameter {i} ({} values): ‖g‖ {} vs the reference's {}, g·w {} vs {} (error {e:.2e})",
            p.numel,
            p.grad_sq.sqrt(),
            gsq.sqrt(),
            p.grad_dot_w,
            gdw
        );
    }
    let ours: f64 = got.params.iter().map(|p| p.grad_sq).sum::<f64>().sqrt();
    assert!(
        (ours - total).abs() <= 1e-4 * total,
        "{what}: global gradient norm {ours} vs the reference's {total}"
    );
    eprintln!("{what}: worst parameter-gradient error {:.2e} (tensor {})", worst.0, worst.1);
}

fn cases() -> &'static [Value] {
    GRADIENTS["cases"].as_array().unwrap()
}

#[test]
fn gradients_on_the_cpu_with_fused_kernels_equal_guided_diffusion() {
    for case in cases() {
        let what = format!("cpu/{}", case["name"].as_str().unwrap());
        check(&what, &compute(case, &baseline()), case);
    }
}

#[test]
fn gradients_on_every_target_equal_guided_diffusion() {
    for target in targets() {
        for case in cases() {
            let what = format!("{}/{}", target.name, case["name"].as_str().unwrap());
            check(&what, &target.run(|d| compute(case, d)), case);
        }
    }
}

/// The eval-mode forward pass of every fixture network on `target`.
fn forward_all(target: Option<&Target>) {
    for (kind, list) in [("unet", "unets"), ("classifier", "classifiers")] {
        for case in FORWARD[list].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let run = |d: &Device| {
                let net = Net::load(case, d);
                let x = tensor_of::<4>(&case["x"], d);
                if kind == "unet" {
                    values(net.forward::<4>(case, x))
                } else {
                    values(net.forward::<2>(case, x))
                }
            };
            let (label, out) = match target {
                Some(t) => (t.name, t.run(run)),
                None => ("cpu", run(&baseline())),
            };
            assert_close(&format!("{label}/{name}: forward"), &out, &floats(&case["out"]["data"]), 1e-4);
        }
    }
}

#[test]
fn forward_passes_on_every_target_equal_guided_diffusion() {
    forward_all(None);
    for target in targets() {
        forward_all(Some(&target));
    }
}

/// The networks of the presets, freshly initialised (zero-initialised output layers included,
/// as training starts from them) and then randomised: each parameter's gradient on every target
/// equals the baseline's.
#[test]
fn preset_network_gradients_on_every_target_equal_the_baseline() {
    use diffusion_train::config::TrainConfig;
    use diffusion_train::trainer::Net;
    for (preset, randomised) in [("default", false), ("default", true), ("tiny", true)] {
        let cfg = TrainConfig::preset(preset).unwrap();
        let size = cfg.image_size;
        let compute = |device: &Device| {
            let ad = device.clone().autodiff();
            let net =
                diffusion_train::trainer::init_seeded(7, &ad, |host| Net::init(&cfg.model, host)).unwrap();
            let net = if randomised { randomise_from_host(net) } else { net };
            let Net::Unet(unet) = net else { panic!("{preset} is a UNet preset") };
            let b = 6;
            let x = host_normal([b, 3, size, size], 1, &ad).require_grad();
            let t = Tensor::<1>::from_data(
                TensorData::new(vec![0.0f32, 17.0, 250.0, 500.0, 750.0, 999.0], [b]),
                &ad,
            );
            let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 0, 1], [b]), &ad);
            let out = unet.forward(x.clone(), t, Some(y));
            let target = host_normal(out.dims(), 2, &ad);
            let loss = (out - target).square().mean();
            let grads = loss.backward();
            (values(loss), values(x.grad(&grads).unwrap()), param_grads(&unet, &grads))
        };
        let base = compute(&baseline());
        for target in targets() {
            let got = target.run(compute);
            let what = format!(
                "{}/{preset}{}",
                target.name,
                if randomised { " (randomised)" } else { " (initialised)" }
            );
            assert_close(&format!("{what}: loss"), &got.0, &base.0, 1e-5);
            assert_close(&format!("{what}: dL/dx"), &got.1, &base.1, 2e-4);
            let total: f64 = base.2.iter().map(|p| p.grad_sq).sum::<f64>().sqrt();
            assert_eq!(got.2.len(), base.2.len(), "{what}: parameter tensors");
            for (i, (a, e)) in got.2.iter().zip(&base.2).enumerate() {
                assert_eq!(a.numel, e.numel);
                let norm = e.grad_sq.sqrt().max(1e-2 * total);
                let err = ((a.grad_sq.sqrt() - e.grad_sq.sqrt()).abs() / norm)
                    .max((a.grad_dot_w - e.grad_dot_w).abs() / (norm * e.sq.sqrt().max(1e-6)));
                assert!(
                    err <= 1e-3,
                    "{what}: parameter {i} ({} values): ‖g‖ {} vs the baseline's {} (error {err:.2e})",
                    a.numel,
                    a.grad_sq.sqrt(),
                    e.grad_sq.sqrt()
                );
            }
        }
    }
}

/// Deterministic host-side standard-normal-ish values (a sum of uniforms), the same on every device.
fn host_normal<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
    };
    let data: Vec<f32> = (0..n).map(|_| (0..4).map(|_| next()).sum::<f32>() - 2.0).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Every parameter replaced by host-generated values (about 𝒩(0, 0.1²)), so
/// that the same network exists on every device whatever each device's random generator does.
fn randomise_from_host<M: burn::module::Module>(m: M) -> M {
    struct R(u64);
    impl burn::module::ModuleMapper for R {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            self.0 += 1;
            let seed = self.0;
            param.map(|t| host_normal(t.dims(), seed, &t.device()).mul_scalar(0.1).require_grad())
        }
    }
    m.map(&mut R(100))
}
