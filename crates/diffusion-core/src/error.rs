//! The typed errors of `diffusion-core`.

use thiserror::Error;

/// Everything a caller of `diffusion-core` can get wrong: schedules, respacing specs, sampler state.
///
/// Tensor maths never returns this: a broken shape contract is a programming error and panics with
/// a sentence naming the contract.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum Error {
    /// ᾱ reaches 0 at the last step (zero terminal SNR) but the network does not predict v: at
    /// ᾱ = 0 the input x_T is pure noise, so ε is the input itself and x_0 cannot be recovered
    /// from a prediction of ε (Lin et al. 2023, §3.2).
    #[error(
        "alphas_cumprod reaches 0 at the last step (zero terminal SNR), where x_T is pure noise: \
         that needs a network that predicts v (mean = velocity; `--prediction velocity` when training, \
         `--mean velocity` for the process flags), but this process's mean is {mean}"
    )]
    ZeroTerminalSnr {
        /// The parameterisation that was asked for.
        mean: String,
    },
    /// A schedule needs at least one step (`T = 0` was given).
    #[error("a diffusion schedule needs at least one timestep (T = 0 was given)")]
    NoTimesteps,
    /// The posterior needs β̃₁ to clip log β̃₀, so a process needs `T ≥ 2`.
    #[error(
        "a Gaussian diffusion process needs at least 2 timesteps (got T = {0}): \
         the clipped posterior log-variance at t = 0 borrows the value at t = 1"
    )]
    TooFewTimesteps(usize),
    /// A β outside (0, 1] or not finite.
    #[error("beta[{index}] = {value} is outside (0, 1]: every beta must satisfy 0 < beta <= 1")]
    BetaOutOfRange {
        /// Position in the schedule.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// An ᾱ outside (0, 1) or not finite.
    #[error(
        "alphas_cumprod[{index}] = {value} is outside (0, 1): every alpha-bar must satisfy 0 < alpha_bar < 1"
    )]
    AlphaBarOutOfRange {
        /// Position in the schedule.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// ᾱ must strictly decrease (each step adds noise).
    #[error(
        "alphas_cumprod must strictly decrease, but alphas_cumprod[{index}] = {value} >= \
         alphas_cumprod[{prev_index}] = {prev_value}",
        prev_index = index - 1
    )]
    AlphaBarNotDecreasing {
        /// Position of the first value that does not decrease.
        index: usize,
        /// ᾱ at `index`.
        value: f64,
        /// ᾱ at `index - 1`.
        prev_value: f64,
    },
    /// A respacing spec that cannot be parsed or realised.
    #[error("invalid respacing {spec:?} for {num_timesteps} timesteps: {reason}")]
    InvalidRespacing {
        /// The spec as given (e.g. `"ddim50"`, `"10,15,20"`).
        spec: String,
        /// Steps of the process being respaced.
        num_timesteps: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A kept-timestep list that is empty, unsorted or out of range.
    #[error("invalid kept timesteps: {0}")]
    InvalidKeptTimesteps(String),
    /// An unknown schedule name.
    #[error("unknown schedule {0:?} (expected `linear` or `cosine`)")]
    UnknownSchedule(String),
    /// A timestep sampler's state that does not fit the process (e.g. restored from another run).
    #[error("invalid timestep-sampler state: {0}")]
    InvalidSamplerState(String),
    /// A loss batch with timesteps and losses of different lengths, a timestep out of range or a
    /// non-finite loss.
    #[error("invalid sampler update: {0}")]
    InvalidSamplerUpdate(String),
}

/// `Result` with [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
