//! The backend-parity suite's devices and comparisons.
//!
//! "Swap backends via Cargo features" is one of the three uses the workspace is built for; this
//! crate is where it is tested. Its tests (`tests/it`) run every network, training step and
//! sampler on each [`Target`] and compare the numbers with guided-diffusion's (fixtures written
//! by `tools/gen_models_reference.py` and `tools/gen_gradient_reference.py`) and with the
//! baseline, the CPU with our fused kernels ([`baseline`]):
//!
//! - always: the CPU with burn's composite ops ([`diffusion_models::ops::with_composite_ops`]),
//!   which is the code path every device without fused kernels takes;
//! - with the `wgpu` feature: burn's wgpu device (in CI, Mesa's software Vulkan driver
//!   lavapipe), found by `wgpu_device` (with that feature) or reported with a clear reason.
//!
//! Like `diffusion-cli`, this is a leaf crate: it is the only other place that picks a backend.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor};

/// The device every target is compared with: burn's CPU backend with our fused kernels.
pub fn baseline() -> Device {
    Device::flex()
}

/// A device under test, and how its computations run.
#[derive(Debug, Clone)]
pub struct Target {
    /// A name for messages (`cpu-composite`, `wgpu`).
    pub name: &'static str,
    /// The device.
    pub device: Device,
    composite: bool,
}

impl Target {
    /// Runs `f` on this target: on its device, with the fused CPU kernels off where the target
    /// says so (they apply only to CPU tensors, so on a GPU the setting changes nothing).
    pub fn run<R>(&self, f: impl FnOnce(&Device) -> R) -> R {
        if self.composite {
            diffusion_models::ops::with_composite_ops(|| f(&self.device))
        } else {
            f(&self.device)
        }
    }
}

/// Every target of this build: the CPU with composite ops, and wgpu when compiled in.
///
/// # Panics
/// With the `wgpu` feature, when no wgpu adapter can be acquired (the message names what is
/// missing): a suite built to test wgpu must not pass by skipping it.
pub fn targets() -> Vec<Target> {
    #[allow(unused_mut)]
    let mut t = vec![Target { name: "cpu-composite", device: Device::flex(), composite: true }];
    #[cfg(feature = "wgpu")]
    t.push(Target {
        name: "wgpu",
        device: wgpu_device().unwrap_or_else(|e| panic!("{e}")),
        composite: false,
    });
    t
}

/// burn's default wgpu device, after checking that an adapter can be acquired: an error naming
/// what is missing rather than a panic from inside wgpu at the first operation.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Result<Device, String> {
    use std::sync::OnceLock;
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let device = burn_wgpu::WgpuDevice::default();
            let options = burn_wgpu::RuntimeOptions::try_default().map_err(|e| e.to_string())?;
            burn_wgpu::try_init_setup::<burn_wgpu::graphics::AutoGraphicsApi>(&device, options)
                .map(|_| ())
                .map_err(|e| {
                    format!(
                        "no wgpu adapter could be acquired ({e}); on Linux this needs a Vulkan \
                         driver, e.g. Debian's `mesa-vulkan-drivers` and `libvulkan1` (software \
                         Vulkan, lavapipe), and `vulkaninfo --summary` lists it"
                    )
                })
        })
        .clone()?;
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

/// Flat `f32` values of a tensor, read back to the host.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

/// The largest `|a − b| / max(scale, |b|)` over the elements, where `scale` is the largest
/// `|b|` (so small entries of a large tensor are judged on the tensor's scale).
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs())).max(1e-30);
    a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((f64::from(x) - f64::from(y)).abs() / scale))
}

/// Asserts that `a` equals `b` to `tol` relative to `b`'s largest magnitude.
#[track_caller]
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f64) {
    let d = max_rel_diff(a, b);
    assert!(d <= tol, "{what}: differs by {d:.3e} relative to its scale (tolerance {tol:.0e})");
}

/// What identifies a parameter tensor and its gradient without names or layouts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamGrad {
    /// Element count.
    pub numel: usize,
    /// Σ w (random weights make it unique within a network).
    pub sum: f64,
    /// Σ w².
    pub sq: f64,
    /// Σ g².
    pub grad_sq: f64,
    /// Σ g·w.
    pub grad_dot_w: f64,
}

/// [`ParamGrad`] of every float parameter of `module`, in visiting order (a parameter without a
/// gradient counts as a zero gradient).
pub fn param_grads<M: Module>(module: &M, grads: &Gradients) -> Vec<ParamGrad> {
    struct Visit<'a>(&'a Gradients, Vec<ParamGrad>);
    impl ModuleVisitor for Visit<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let w = values(param.val());
            let g = param.val().grad(self.0).map(values).unwrap_or_else(|| vec![0.0; w.len()]);
            let f = |x: f32| f64::from(x);
            self.1.push(ParamGrad {
                numel: w.len(),
                sum: w.iter().map(|&x| f(x)).sum(),
                sq: w.iter().map(|&x| f(x) * f(x)).sum(),
                grad_sq: g.iter().map(|&x| f(x) * f(x)).sum(),
                grad_dot_w: g.iter().zip(&w).map(|(&a, &b)| f(a) * f(b)).sum(),
            });
        }
    }
    let mut v = Visit(grads, Vec::new());
    module.visit(&mut v);
    v.1
}

/// Every float parameter of `module` marked as requiring a gradient.
pub fn track<M: Module>(module: M) -> M {
    struct Track;
    impl burn::module::ModuleMapper for Track {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.require_grad())
        }
    }
    module.map(&mut Track)
}
