//! The burn backends this binary was built with.

use std::fmt;
use std::str::FromStr;

/// The CPU backend, always built.
pub type Cpu = burn::backend::Flex;
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// Where the networks run, as named on the command line (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Wgpu,
}

impl DeviceKind {
    /// The kinds compiled into this binary.
    pub fn available() -> Vec<DeviceKind> {
        let mut kinds = vec![DeviceKind::Cpu];
        if cfg!(feature = "cuda") {
            kinds.push(DeviceKind::Cuda);
        }
        if cfg!(feature = "wgpu") {
            kinds.push(DeviceKind::Wgpu);
        }
        kinds
    }

    /// The best device compiled in that can start here (CUDA, then wgpu, then CPU).
    pub fn preferred() -> DeviceKind {
        Self::available()
            .into_iter()
            .rev()
            .find(|kind| kind.check().is_ok())
            .unwrap_or(DeviceKind::Cpu)
    }

    /// Whether this device can start here. burn's CUDA device thread panics when the driver
    /// library is missing (cudarc's dynamic loading); this says so as an error instead.
    pub fn check(self) -> Result<(), crate::Error> {
        #[cfg(feature = "cuda")]
        if self == DeviceKind::Cuda {
            // SAFETY: only loads the driver library (cudarc `driver::sys::is_culib_present`).
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                return Err(crate::Error::config(
                    "--device cuda: the CUDA driver library (libcuda.so) is not installed or \
                     not on LD_LIBRARY_PATH",
                ));
            }
        }
        Ok(())
    }

    fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Wgpu => "wgpu",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let available = Self::available();
        match available.iter().find(|k| k.name() == s) {
            Some(k) => Ok(*k),
            None => {
                let names: Vec<_> = available.iter().map(|k| k.name()).collect();
                Err(format!(
                    "device `{s}` is not built into this binary; available: {}",
                    names.join(", ")
                ))
            }
        }
    }
}

/// Runs `$body` with `$B` bound to the backend type of `$kind` and `$device` to its default
/// device, so generic code is monomorphised once per compiled-in backend.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $device:ident| $body:expr) => {
        match $kind {
            $crate::backend::DeviceKind::Cpu => {
                type $B = $crate::backend::Cpu;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::DeviceKind::Cuda => {
                type $B = $crate::backend::Cuda;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::DeviceKind::Wgpu => {
                type $B = $crate::backend::Wgpu;
                let $device = Default::default();
                $body
            }
            #[allow(unreachable_patterns)]
            other => unreachable!("{other} is not compiled in"),
        }
    };
}

/// The float type the networks compute and keep their weights in (`--dtype`). No f16: the
/// SDXL VAE and T5 overflow in it unless parts are upcast (diffusers' `force_upcast`,
/// transformers' fp16 clamp), which this build does not do; bf16 has f32's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// What `--dtype` asked for on `device`, or that device's default: bf16 on CUDA, where it
    /// halves memory and runs on tensor cores; f32 on the CPU, where it is the faithful default
    /// and half precision saves memory but not time, and on wgpu, whose shading language
    /// (WGSL) has no bf16 (nor does cubecl's Vulkan path on Mesa; f16 is not offered, above).
    pub fn resolve(
        asked: Option<Precision>,
        device: DeviceKind,
    ) -> Result<Precision, crate::Error> {
        match (asked, device) {
            (Some(Precision::Bf16), DeviceKind::Wgpu) => Err(crate::Error::config(
                "--dtype bf16 is not available on wgpu: WGSL has no bf16 type; use --dtype f32 \
                 (the default there) or --device cuda",
            )),
            (Some(asked), _) => Ok(asked),
            (None, DeviceKind::Cuda) => Ok(Precision::Bf16),
            (None, DeviceKind::Cpu | DeviceKind::Wgpu) => Ok(Precision::F32),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn float_dtype(self) -> burn::tensor::FloatDType {
        match self {
            Precision::F32 => burn::tensor::FloatDType::F32,
            Precision::Bf16 => burn::tensor::FloatDType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("dtype `{s}` is not one of f32, bf16"))
    }
}

/// Makes `precision` the float type of every tensor created on `device` from now on: weights
/// as they load, and everything the networks build while they run. burn fixes a device's
/// types at its first tensor, so this must come before any; asking again for the type already
/// set is fine.
pub fn set_precision<B: burn::prelude::Backend>(
    device: &B::Device,
    precision: Precision,
) -> Result<(), crate::Error> {
    use burn::tensor::Element;
    let float = precision.float_dtype();
    let int: burn::tensor::IntDType = <B::IntElem as Element>::dtype().into();
    match burn::tensor::set_default_dtypes::<B>(device, float, int) {
        Ok(()) => Ok(()),
        Err(_) if burn::tensor::get_device_settings::<B>(device).float_dtype == float => Ok(()),
        Err(e) => Err(crate::Error::config(format!(
            "cannot compute in {precision}: {e}"
        ))),
    }
}
