//! `--device cpu|wgpu[:N]|vulkan[:N]|cuda[:N]`: the one place where a burn backend is chosen.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::Device;

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's `flex` CPU backend (SIMD + rayon).
    Cpu,
    /// A wgpu adapter (Vulkan, Metal or DX12), by index among discrete GPUs, or the default one.
    Wgpu(Option<usize>),
    /// wgpu pinned to Vulkan.
    Vulkan(Option<usize>),
    /// An NVIDIA GPU by index.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i =
                    i.parse::<usize>().map_err(|_| format!("device index {i:?} in {s:?} is not a number"))?;
                (n, Some(i))
            }
            None => (s, None),
        };
        match (name, index) {
            ("cpu" | "flex", None) => Ok(Self::Cpu),
            ("cpu" | "flex", Some(_)) => Err("the cpu device takes no index".into()),
            ("wgpu", i) => Ok(Self::Wgpu(i)),
            ("vulkan", i) => Ok(Self::Vulkan(i)),
            ("cuda", i) => Ok(Self::Cuda(i.unwrap_or(0))),
            _ => Err(format!("unknown device {s:?}: expected cpu, wgpu[:N], vulkan[:N] or cuda[:N]")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Wgpu(None) => write!(f, "wgpu"),
            Self::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            Self::Vulkan(None) => write!(f, "vulkan"),
            Self::Vulkan(Some(i)) => write!(f, "vulkan:{i}"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// The adapter behind a wgpu/Vulkan device (name, API, driver), acquiring it; `None` for
    /// other devices.
    pub fn adapter(self) -> Result<Option<String>> {
        match self {
            #[cfg(feature = "wgpu")]
            Self::Wgpu(i) => wgpu_probe::acquire(self, i, false).map(Some),
            #[cfg(feature = "vulkan")]
            Self::Vulkan(i) => wgpu_probe::acquire(self, i, true).map(Some),
            _ => Ok(None),
        }
    }

    /// The burn device, or an error naming the Cargo feature this binary lacks.
    pub fn device(self) -> Result<Device> {
        match self {
            #[cfg(feature = "cpu")]
            Self::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu(i) => {
                use burn::tensor::DeviceKind;
                wgpu_probe::acquire(self, i, false)?;
                Ok(Device::wgpu(i.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu)))
            }
            #[cfg(feature = "vulkan")]
            Self::Vulkan(i) => {
                use burn::tensor::DeviceKind;
                wgpu_probe::acquire(self, i, true)?;
                Ok(Device::vulkan(i.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu)))
            }
            #[cfg(feature = "cuda")]
            Self::Cuda(i) => Ok(Device::cuda(i)),
            #[allow(unreachable_patterns)]
            other => bail!(
                "this `diffusion` binary was built without the `{}` feature; rebuild it with \
                 `cargo xtask <command> --backend {}` (or `cargo build -p diffusion-cli --features {}`)",
                other.feature(),
                other.feature(),
                other.feature()
            ),
        }
    }

    /// The Cargo feature of `diffusion-cli` that provides this device.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu(_) => "wgpu",
            Self::Vulkan(_) => "vulkan",
            Self::Cuda(_) => "cuda",
        }
    }
}

/// Acquiring a wgpu adapter before burn's first operation would (which panics deep inside
/// cubecl when there is none), so that a machine without a driver gets one clear error.
#[cfg(feature = "wgpu")]
mod wgpu_probe {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use anyhow::{Result, anyhow};
    use burn_wgpu::graphics::AutoGraphicsApi;
    use burn_wgpu::{RuntimeOptions, WgpuBackend, WgpuDevice, WgpuInitError};

    /// The outcome of each device's first acquisition: an adapter is registered once per
    /// process, and a second registration would fail.
    static ACQUIRED: Mutex<Option<HashMap<WgpuDevice, Result<String, String>>>> = Mutex::new(None);

    /// Acquires the adapter burn's `Device::wgpu`/`Device::vulkan` would use, once per process,
    /// and describes it (name, API, driver); the error names the device and what is missing.
    pub fn acquire(spec: super::DeviceSpec, index: Option<usize>, vulkan: bool) -> Result<String> {
        use cubecl_wgpu::WgpuDeviceKind as Kind;
        let kind = index.map_or(Kind::DefaultDevice, Kind::DiscreteGpu);
        let mut device = WgpuDevice::new(kind);
        if vulkan {
            device = device.on(WgpuBackend::Vulkan);
        }
        let mut map = ACQUIRED.lock().expect("probe lock");
        let outcome = map.get_or_insert_with(HashMap::new).entry(device.clone()).or_insert_with(|| {
            let init = |options| -> Result<String, WgpuInitError> {
                let setup = if vulkan {
                    burn_wgpu::try_init_setup::<burn_wgpu::graphics::Vulkan>(&device, options)?
                } else {
                    burn_wgpu::try_init_setup::<AutoGraphicsApi>(&device, options)?
                };
                let info = setup.adapter.get_info();
                Ok(format!(
                    "{} ({:?}, {:?}; driver {} {})",
                    info.name, info.backend, info.device_type, info.driver, info.driver_info
                ))
            };
            RuntimeOptions::try_default().and_then(init).map_err(|e| e.to_string())
        });
        outcome.clone().map_err(|e| {
            anyhow!(
                "device {spec}: no {} adapter could be acquired ({e}). On Linux this needs a Vulkan \
                 driver and loader: a GPU's, or Mesa's software one (Debian/Ubuntu: `apt-get install \
                 mesa-vulkan-drivers libvulkan1`); `vulkaninfo --summary` lists what is installed",
                if vulkan { "Vulkan" } else { "wgpu" }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("wgpu".parse(), Ok(DeviceSpec::Wgpu(None)));
        assert_eq!("wgpu:1".parse(), Ok(DeviceSpec::Wgpu(Some(1))));
        assert_eq!("vulkan:0".parse(), Ok(DeviceSpec::Vulkan(Some(0))));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("cuda:x".parse::<DeviceSpec>().unwrap_err().contains("not a number"));
        assert!("tpu".parse::<DeviceSpec>().unwrap_err().contains("unknown device"));
        assert!("cpu:1".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn a_backend_that_is_not_compiled_in_is_a_clear_error() {
        #[cfg(not(feature = "cuda"))]
        {
            let err = DeviceSpec::Cuda(0).device().unwrap_err().to_string();
            assert!(err.contains("without the `cuda` feature"), "{err}");
        }
        #[cfg(feature = "cpu")]
        assert!(DeviceSpec::Cpu.device().is_ok());
    }
}
