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

    /// The best device compiled in (CUDA, then wgpu, then CPU).
    pub fn preferred() -> DeviceKind {
        *Self::available().last().expect("cpu is always available")
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
