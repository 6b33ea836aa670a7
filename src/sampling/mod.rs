//! Noise, schedules and samplers: pure functions over tensors, no model code.

pub mod comfy;
mod flow_match;
mod samplers;
mod schedule;
mod torch_rng;

use std::fmt;
use std::str::FromStr;

pub use flow_match::{FlowMatchConfig, Linspace, euler_step};
pub use samplers::{Prediction, Sampler, StepOutput};
pub use schedule::{Schedule, SchedulerConfig};
pub use torch_rng::TorchGenerator;

/// Where ancestral samplers draw their noise from (the run's [`TorchGenerator`]).
pub trait NoiseSource {
    /// `n` standard normal values.
    fn randn(&mut self, n: usize) -> Vec<f32>;
}

impl NoiseSource for TorchGenerator {
    fn randn(&mut self, n: usize) -> Vec<f32> {
        TorchGenerator::randn(self, n)
    }
}

/// A fresh seed for a request that gave none, in the range A1111 uses (0..2³²).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    RandomState::new().hash_one(nanos) & 0xffff_ffff
}

/// The sampling methods offered for discrete-time (SDXL) models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    Euler,
    EulerAncestral,
    DpmPp2m,
}

/// How the σ of the N steps are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    /// The model's own diffusers scheduler config (SDXL: "leading" spacing, steps_offset 1).
    Normal,
    /// Karras et al. ρ=7.
    Karras,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 3] = [
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::DpmPp2m,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_ancestral",
            SamplerKind::DpmPp2m => "dpmpp_2m",
        }
    }

    /// The name A1111 writes in its `parameters` text ("Sampler: ...").
    pub fn a1111_name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "Euler",
            SamplerKind::EulerAncestral => "Euler a",
            SamplerKind::DpmPp2m => "DPM++ 2M",
        }
    }
}

impl ScheduleKind {
    pub const ALL: [ScheduleKind; 2] = [ScheduleKind::Normal, ScheduleKind::Karras];

    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Normal => "normal",
            ScheduleKind::Karras => "karras",
        }
    }
}

/// Parsing by name, with the list of accepted names in the error.
macro_rules! named_enum {
    ($t:ty, $what:literal) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.name() == s)
                    .ok_or_else(|| {
                        let names: Vec<_> = Self::ALL.iter().map(|v| v.name()).collect();
                        format!(
                            "unknown {} `{s}`; expected one of: {}",
                            $what,
                            names.join(", ")
                        )
                    })
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}
named_enum!(SamplerKind, "sampler");
named_enum!(ScheduleKind, "scheduler");
