//! JIT settings, part of every run's configuration (also when the JIT is compiled out).

use serde::{Deserialize, Serialize};

/// Backward jumps per entry into compiled code: a few hundred microseconds of a tight loop,
/// a few interpreter slices' worth, so handing back and re-entering stays under 1% of the time.
pub const FUEL: i64 = 100_000;

/// When functions are compiled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JitMode {
    /// Never: everything is interpreted.
    Off,
    /// When a function's calls plus loop iterations reach the threshold.
    #[default]
    Auto,
    /// At a function's first call, for the types of that call's arguments (for tests).
    Eager,
}

impl std::str::FromStr for JitMode {
    type Err = String;

    fn from_str(s: &str) -> Result<JitMode, String> {
        match s {
            "off" => Ok(JitMode::Off),
            "auto" => Ok(JitMode::Auto),
            "eager" => Ok(JitMode::Eager),
            other => Err(format!("--jit is off, auto or eager, not `{other}`")),
        }
    }
}

/// How hard cranelift works on compiled code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JitTiers {
    /// A function is compiled first by the baseline tier (no IR optimiser, a single-pass
    /// register allocator: about half the compile time, code 1.1-1.6x slower); when compiled
    /// code runs out of fuel while baseline code exists, that code is compiled again by the
    /// optimizing tier and used from the next call or loop entry on.
    #[default]
    Tiered,
    /// The baseline tier only.
    Baseline,
    /// The optimizing tier only.
    Optimized,
}

impl std::str::FromStr for JitTiers {
    type Err = String;

    fn from_str(s: &str) -> Result<JitTiers, String> {
        match s {
            "tiered" => Ok(JitTiers::Tiered),
            "baseline" => Ok(JitTiers::Baseline),
            "optimized" => Ok(JitTiers::Optimized),
            other => Err(format!(
                "--jit-tiers is tiered, baseline or optimized, not `{other}`"
            )),
        }
    }
}

/// JIT settings of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JitOptions {
    pub mode: JitMode,
    /// Calls plus backward jumps a function makes before it is compiled in `auto` mode.
    pub threshold: u32,
    #[serde(default)]
    pub tiers: JitTiers,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            mode: JitMode::Auto,
            threshold: 200,
            tiers: JitTiers::Tiered,
        }
    }
}
