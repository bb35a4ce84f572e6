//! Classifier-free guidance: the combination, the batched guided network, and sampling with it.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Distribution, Int, Tensor};
use diffusion_core::{BetaSchedule, GaussianDiffusion};
use diffusion_models::{UNet, UNetConfig};
use diffusion_sample::generate::{Job, sample_images};
use diffusion_sample::{ClassifierFree, Denoiser, GuidedUnet, Method, SampleOptions};

/// Every parameter drawn from U(−0.1, 0.1) (the output convolution starts at zero, which would
/// make every output 0), seeded.
struct Randomise(u64);

impl ModuleMapper for Randomise {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.0 += 1;
        let seed = self.0;
        param.map(|t| {
            let dims = t.dims();
            let n: usize = dims.iter().product();
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
                })
                .collect();
            Tensor::<D>::from_data(burn::tensor::TensorData::new(v, dims), &t.device())
        })
    }
}

fn unet(out_channels: usize, null_class: bool) -> UNet {
    let cfg = UNetConfig::new(8, 1, 32, out_channels, 1, vec![], vec![1, 2])
        .with_num_classes(Some(3))
        .with_null_class(null_class);
    cfg.try_init(&Device::flex()).unwrap().map(&mut Randomise(7))
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// One batched call gives u + s (c − u) of two separate calls (labels y, then the null label 3),
/// on the prediction channels only: a learned variance's channels are the conditional ones.
#[test]
fn guided_unet_is_the_guided_combination_of_two_calls() {
    let dev = Device::flex();
    for out_channels in [1, 2] {
        let net = unet(out_channels, true);
        assert_eq!(net.null_label(), Some(3));
        let x = Tensor::<4>::random([2, 1, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let t = Tensor::<1>::from_floats([10.0, 600.5], &dev);
        let y = Tensor::<1, Int>::from_ints([0, 2], &dev);
        let cond = net.forward(x.clone(), t.clone(), Some(y.clone()));
        let uncond = net.forward(x.clone(), t.clone(), Some(Tensor::<1, Int>::from_ints([3, 3], &dev)));
        assert!(max_diff(&values(cond.clone()), &values(uncond.clone())) > 1e-3, "the label matters");
        let cfg = ClassifierFree::new(3.0, 0.0).unwrap();
        let got = values(GuidedUnet::new(&net, y.clone(), cfg).unwrap().denoise(x, t));
        let (c, u) = (values(cond), values(uncond));
        let per = 64;
        for (i, g) in got.iter().enumerate() {
            let want =
                if out_channels == 2 && (i / per) % 2 == 1 { c[i] } else { u[i] + 3.0 * (c[i] - u[i]) };
            assert!((g - want).abs() <= 1e-5 * want.abs().max(1.0), "element {i}: {g} vs {want}");
        }
    }
}

/// The rescale φ = 1 gives the conditional output's standard deviation per sample, φ = 0 the
/// plain guided output; s = 1 the conditional output, s = 0 the unconditional.
#[test]
fn guidance_rescale_matches_the_conditional_spread() {
    let dev = Device::flex();
    let c = Tensor::<4>::random([3, 2, 4, 4], Distribution::Normal(0.5, 2.0), &dev);
    let u = Tensor::<4>::random([3, 2, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
    let std = |x: Tensor<4>| values(x.reshape([3, 32]).var(1).sqrt());
    let full = ClassifierFree::new(5.0, 1.0).unwrap().combine(c.clone(), u.clone());
    let plain = ClassifierFree::new(5.0, 0.0).unwrap().combine(c.clone(), u.clone());
    assert!(max_diff(&std(full.clone()), &std(c.clone())) < 1e-4);
    assert!(max_diff(&std(plain.clone()), &std(c.clone())) > 0.5, "guidance at s = 5 widens the output");
    // φ = 1 is the plain guided output scaled per sample (same direction).
    let (f, p) = (values(full), values(plain));
    let ratio = f[0] / p[0];
    assert!(f[..32].iter().zip(&p[..32]).all(|(a, b)| (a - ratio * b).abs() < 1e-4));
    let one = ClassifierFree::new(1.0, 0.0).unwrap().combine(c.clone(), u.clone());
    assert!(max_diff(&values(one), &values(c)) < 1e-6);
    let zero = ClassifierFree::new(0.0, 0.0)
        .unwrap()
        .combine(Tensor::<4>::ones([1, 1, 1, 1], &dev), u.clone().slice([0..1, 0..1, 0..1, 0..1]));
    assert!(max_diff(&values(zero), &values(u.slice([0..1, 0..1, 0..1, 0..1]))) < 1e-6);
    assert!(ClassifierFree::new(f64::NAN, 0.0).is_err() && ClassifierFree::new(2.0, 1.5).is_err());
}

/// Through `sample_images` with every kind of sampler: s = 1 reproduces conditional sampling,
/// s = 4 moves the samples, and a network without a null class is refused with a reason.
#[test]
fn sampling_with_cfg_uses_the_labels_and_needs_a_null_class() {
    let dev = Device::flex();
    let net = unet(1, true);
    let d = GaussianDiffusion::from_schedule(&BetaSchedule::Cosine { num_timesteps: 20 }, Default::default())
        .unwrap();
    let ids = [0, 1, 2];
    let schedule = diffusion_sample::StepSchedule {
        steps: 5,
        spacing: diffusion_core::TimestepSpacing::Trailing,
        karras: false,
    };
    for method in [
        Method::Ddim { eta: 0.0 },
        Method::Karras {
            method: diffusion_sample::karras::KarrasMethod::Heun,
            schedule,
            churn: Default::default(),
        },
        Method::UniPc {
            order: 2,
            variant: diffusion_sample::unipc::UniPcVariant::Bh2,
            schedule: Some(schedule),
        },
    ] {
        let run = |cfg| {
            let job =
                Job { diffusion: &d, method, options: SampleOptions::default(), seed: 3, batch_size: 3, cfg };
            sample_images(&job, &net, &ids, None, None, &dev, &|_| {}).map(|s| values(s.samples))
        };
        let plain = run(None).unwrap();
        let one = run(Some(ClassifierFree::new(1.0, 0.0).unwrap())).unwrap();
        let four = run(Some(ClassifierFree::new(4.0, 0.0).unwrap())).unwrap();
        assert!(max_diff(&plain, &one) < 1e-4, "{method:?}: s = 1 is conditional sampling");
        assert!(max_diff(&plain, &four) > 1e-2, "{method:?}: s = 4 guides");
    }
    let without = unet(1, false);
    let job = Job {
        diffusion: &d,
        method: Method::Ddim { eta: 0.0 },
        options: SampleOptions::default(),
        seed: 3,
        batch_size: 3,
        cfg: Some(ClassifierFree::new(3.0, 0.0).unwrap()),
    };
    let err = sample_images(&job, &without, &ids, None, None, &dev, &|_| {}).unwrap_err().to_string();
    assert!(err.contains("null class"), "{err}");
}
