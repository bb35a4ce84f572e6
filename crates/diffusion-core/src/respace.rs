//! Respacing: sampling with fewer steps than training (Nichol & Dhariwal 2021, §4).
//!
//! A respaced process keeps a subset S of the original steps and recomputes
//! β'_i = 1 − ᾱ_{S_i}/ᾱ_{S_{i−1}}, so that ᾱ is unchanged at every kept step; see
//! [`crate::GaussianDiffusion::respace`]. This module chooses S.

use crate::error::{Error, Result};

/// The steps of a `num_timesteps`-step process to keep, sorted, from a spec:
///
/// - `"ddimN"`: the DDIM paper's fixed striding `0, k, 2k, …` with the integer stride `k` that
///   yields exactly N steps (an error if none does);
/// - `"a,b,c"`: split the process into equal sections (the first `T mod n` sections one step
///   longer) and take `a`, `b`, `c` evenly spaced steps from them, the first and last step of each
///   section included (rounding half to even, like Python's `round`);
/// - `"N"`: one section, N evenly spaced steps;
/// - `"linspaceN"`, `"leadingN"` (`"leadingN+K"`: steps offset K), `"trailingN"`: diffusers'
///   timestep spacings ([`spaced_timesteps`]).
///
/// Mirrors improved-diffusion's `space_timesteps` (and diffusers' `set_timesteps`).
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>> {
    let invalid = |reason: String| Error::InvalidRespacing { spec: spec.to_string(), num_timesteps, reason };
    let spec_trim = spec.trim();
    if num_timesteps == 0 {
        return Err(invalid("the process has no timesteps".into()));
    }
    if let Some(parsed) = parse_spacing(spec_trim) {
        let (spacing, n) = parsed.map_err(invalid)?;
        return spaced_timesteps(num_timesteps, n, spacing);
    }
    if let Some(count) = spec_trim.strip_prefix("ddim") {
        let desired: usize =
            count.parse().map_err(|_| invalid(format!("{count:?} after `ddim` is not a step count")))?;
        for stride in 1..num_timesteps {
            if num_timesteps.div_ceil(stride) == desired {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
        }
        return Err(invalid(format!("cannot create exactly {desired} steps with an integer stride")));
    }
    let counts: Vec<usize> = spec_trim
        .split(',')
        .map(|s| s.trim().parse::<usize>().map_err(|_| invalid(format!("{s:?} is not a step count"))))
        .collect::<Result<_>>()?;
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start = 0usize;
    let mut steps = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count {
            return Err(invalid(format!("cannot divide section of {size} steps into {count}")));
        }
        let frac_stride = if count <= 1 { 1.0 } else { (size - 1) as f64 / (count - 1) as f64 };
        let mut cur = 0.0f64;
        for _ in 0..count {
            steps.push(start + cur.round_ties_even() as usize);
            cur += frac_stride;
        }
        start += size;
    }
    steps.sort_unstable();
    steps.dedup();
    if steps.is_empty() {
        return Err(invalid("no step would be kept".into()));
    }
    Ok(steps)
}

/// How a sampler with fewer steps picks its timesteps, as diffusers' `timestep_spacing` (the three
/// rules of Lin et al. 2023, Table 2). Steps are indices `0..T` of the training process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestepSpacing {
    /// `round(linspace(0, T − 1, n))`: first and last training step included.
    Linspace,
    /// `k · ⌊T/n⌋ + steps_offset` for k = 0 … n − 1 (Stable Diffusion's default; never reaches
    /// the last training step).
    Leading {
        /// Added to every step (diffusers' `steps_offset`).
        steps_offset: usize,
    },
    /// `round(T − k · T/n) − 1` for k = 0 … n − 1: the last training step included, the
    /// spacing Lin et al. recommend.
    Trailing,
}

/// The `n` steps of a `num_timesteps`-step process that `spacing` picks, in increasing order
/// (diffusers lists the same steps in decreasing order). Rounding is half to even, like numpy's.
pub fn spaced_timesteps(num_timesteps: usize, n: usize, spacing: TimestepSpacing) -> Result<Vec<usize>> {
    let spec = match spacing {
        TimestepSpacing::Linspace => format!("linspace{n}"),
        TimestepSpacing::Leading { steps_offset: 0 } => format!("leading{n}"),
        TimestepSpacing::Leading { steps_offset } => format!("leading{n}+{steps_offset}"),
        TimestepSpacing::Trailing => format!("trailing{n}"),
    };
    let invalid = |reason: String| Error::InvalidRespacing { spec: spec.clone(), num_timesteps, reason };
    if n == 0 || n > num_timesteps {
        return Err(invalid(format!("the number of steps must be in 1..={num_timesteps}")));
    }
    let t = num_timesteps as f64;
    let mut steps: Vec<i64> = match spacing {
        TimestepSpacing::Linspace => {
            // numpy's linspace: start + k·step, the last value exactly the stop.
            let step = if n > 1 { (t - 1.0) / (n - 1) as f64 } else { 0.0 };
            (0..n)
                .map(|k| if k + 1 == n && n > 1 { t - 1.0 } else { k as f64 * step })
                .map(|v| v.round_ties_even() as i64)
                .collect()
        }
        TimestepSpacing::Leading { steps_offset } => {
            let ratio = (num_timesteps / n) as i64;
            (0..n as i64).map(|k| k * ratio + steps_offset as i64).collect()
        }
        TimestepSpacing::Trailing => {
            // numpy's arange(T, 0, −T/n): ⌈T/(T/n)⌉ values T − k·(T/n).
            let step = t / n as f64;
            let len = (-t / -step).ceil() as usize;
            (0..len).map(|k| (t - k as f64 * step).round_ties_even() as i64 - 1).collect()
        }
    };
    steps.sort_unstable();
    steps.dedup();
    if let Some(&bad) = steps.iter().find(|&&s| s < 0 || s >= num_timesteps as i64) {
        return Err(invalid(format!("step {bad} falls outside 0..{num_timesteps}")));
    }
    Ok(steps.into_iter().map(|s| s as usize).collect())
}

/// `linspaceN`, `leadingN`, `leadingN+K` (steps offset K), `trailingN` → the spacing and N.
pub(crate) fn parse_spacing(spec: &str) -> Option<std::result::Result<(TimestepSpacing, usize), String>> {
    let (spacing, rest) = if let Some(r) = spec.strip_prefix("linspace") {
        (TimestepSpacing::Linspace, r)
    } else if let Some(r) = spec.strip_prefix("trailing") {
        (TimestepSpacing::Trailing, r)
    } else if let Some(r) = spec.strip_prefix("leading") {
        let (n, offset) = match r.split_once('+') {
            Some((n, o)) => match o.parse() {
                Ok(o) => (n, o),
                Err(_) => return Some(Err(format!("{o:?} after `+` is not a steps offset"))),
            },
            None => (r, 0),
        };
        return Some(
            n.parse()
                .map(|n| (TimestepSpacing::Leading { steps_offset: offset }, n))
                .map_err(|_| format!("{n:?} is not a step count")),
        );
    } else {
        return None;
    };
    Some(rest.parse().map(|n| (spacing, n)).map_err(|_| format!("{rest:?} is not a step count")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docstring_example_of_the_reference() {
        // improved-diffusion's docstring: 300 steps, sections [10, 15, 20] of 100 steps each.
        let s = space_timesteps(300, "10,15,20").unwrap();
        assert_eq!(s.len(), 45);
        assert_eq!(&s[..3], &[0, 11, 22]); // stride 99/9 = 11
        assert_eq!(s[9], 99);
        assert_eq!(s[10], 100);
        assert_eq!(*s.last().unwrap(), 299);
    }

    #[test]
    fn ddim_striding() {
        assert_eq!(space_timesteps(1000, "ddim50").unwrap(), (0..1000).step_by(20).collect::<Vec<_>>());
        assert_eq!(space_timesteps(10, "ddim4").unwrap(), vec![0, 3, 6, 9]);
        assert!(space_timesteps(10, "ddim7").is_err());
        assert!(space_timesteps(10, "ddimx").is_err());
    }

    #[test]
    fn single_section_and_errors() {
        assert_eq!(space_timesteps(1000, "1000").unwrap(), (0..1000).collect::<Vec<_>>());
        // 4 steps out of 10: stride 3 -> 0, 3, 6, 9.
        assert_eq!(space_timesteps(10, "4").unwrap(), vec![0, 3, 6, 9]);
        // 5 steps of 10: stride 9/4 = 2.25 -> 0, 2.25, 4.5, 6.75, 9 -> round half even: 0, 2, 4, 7, 9.
        assert_eq!(space_timesteps(10, "5").unwrap(), vec![0, 2, 4, 7, 9]);
        let err = space_timesteps(10, "11").unwrap_err();
        assert!(err.to_string().contains("cannot divide section of 10 steps into 11"), "{err}");
        assert!(space_timesteps(10, "a,b").is_err());
        assert!(space_timesteps(10, "").is_err());
    }
}
