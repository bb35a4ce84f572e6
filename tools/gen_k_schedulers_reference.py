#!/usr/bin/env python3
"""Generate golden values from huggingface diffusers' k-diffusion style schedulers
(EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler) for
diffusion-sample's tests: whole sampling runs driven by a deterministic stand-in network that the
Rust test can evaluate itself, with every model call recorded.

Imports diffusers (installed from PyPI) -- nothing of it is copied here -- and writes
crates/diffusion-sample/tests/it/fixtures/k_schedulers.json.

Usage:
    python3 -m venv venv && venv/bin/pip install numpy torch diffusers==0.42.1
    venv/bin/python tools/gen_k_schedulers_reference.py [out.json]

(Generated with diffusers 0.42.1, torch 2.15.0, numpy 2.4.6 on CPU; the exact versions used are
recorded in the file's "source" field.)

Each run is what a diffusers pipeline does with the scheduler:

    scheduler = Scheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                          beta_schedule=..., prediction_type=..., timestep_spacing=...,
                          steps_offset=..., [use_karras_sigmas=...], [rescale_betas_zero_snr=...])
    scheduler.set_timesteps(num_inference_steps)
    [scheduler.set_begin_index(0)]                  only where "begin_index" is 0
    x = x_T * scheduler.init_noise_sigma            a 0-d float32 tensor, see below
    for t in scheduler.timesteps:                   t: a 0-d torch.float32 tensor
        out = net(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, **kw).prev_sample

  kw: Euler: generator=g plus s_churn / s_tmin / s_tmax / s_noise where the run has them
  (step() arguments; the defaults are s_churn 0, s_tmin 0, s_tmax inf, s_noise 1); Euler
  ancestral: generator=g; Heun: nothing (its step() takes no generator: pipelines only pass the
  arguments a scheduler's step() accepts). use_karras_sigmas is only passed where it is true and
  rescale_betas_zero_snr only where it is true (EulerAncestralDiscreteScheduler has no
  use_karras_sigmas, HeunDiscreteScheduler no rescale_betas_zero_snr: passing them raises
  TypeError, recorded as the run's "error").

The stand-in network, for x (2,2,3,3) float32 and the model timestep t (a float32 0-d tensor;
the Euler family's timesteps are float32 and may be fractional; s = t as float32, unchanged):
    out = A*x + B*s,  (A, B) = (0.9, 0.0003) for prediction_type "epsilon",
                               (0.5, -0.0001) for "sample",
                               (0.7, 0.0002) for "v_prediction",
  with A, B rounded to float32 first and everything in float32: each product rounded, then the
  sum rounded ("sample" is written 0.5*x - 0.0001*s, the same number). The same (A, B) are in the
  file's "network" field.

Noise: diffusers.schedulers.scheduling_euler_discrete.randn_tensor and
scheduling_euler_ancestral_discrete.randn_tensor (what step() calls for its noise) are replaced by
a function that returns inputs["noises"][k] at its k-th call of the run (k = 0, 1, ...); the
number of calls and the step indices at which they happened are checked and stored.

What the schedulers compute
---------------------------
Notation: float32 values are rounded after every operation (torch float32 tensors, 0-d ones
included); "f64" marks numpy float64 arithmetic. T = 1000, N = num_inference_steps.

Training tables (identical in all three schedulers; the file's "schedules"):
    betas: "linear": torch.linspace(1e-4, 0.02, 1000, float32); "squaredcos_cap_v2": the Glide
      cosine schedule (betas_for_alpha_bar, max_beta 0.999) computed in f64, cast to float32.
    abar_j = cumprod(1 - betas)_j (float32 as held), j = 0..T-1.
    s_j = sqrt((1 - abar_j) / abar_j) (float32; increasing in j), the training sigmas.
    l_j = log(s_j) (numpy float32 log of the float32 s_j), used only by the Karras path.
  Zero terminal SNR (rescale_betas_zero_snr=True; Euler and Euler ancestral only): the betas are
  rescaled (diffusers' rescale_zero_terminal_snr, in float32), abar = cumprod(1 - betas), and then
  BOTH EulerDiscreteScheduler and EulerAncestralDiscreteScheduler overwrite the last entry:
  abar_{T-1} = 2**-24 (exactly; the rescale itself would give 0, i.e. an infinite sigma), so
  s_{T-1} = sqrt((1 - 2**-24) / 2**-24) ~ 4096. (HeunDiscreteScheduler does not support the
  option at all.) The tables these schedulers hold are the file's "zero_snr_schedules" (checked
  equal between the two schedulers).

Inference timesteps t_0 > t_1 > ... > t_{N-1} (float32 values; the held tensor is float32):
    "linspace": numpy.linspace(0, 999, N, dtype=float32) reversed: u_i = i * (999 / (N - 1)) in
       f64 for i < N-1, u_{N-1} = 999 exactly, each rounded to float32; t_k = u_{N-1-k}.
       (Fractional for N = 20.)
    "leading": r = 1000 // N (integer division); t_k = (N-1-k) * r + steps_offset.
    "trailing": r = 1000 / N (f64); t_k = round(1000 - k * r) - 1 (numpy.arange(1000, 0, -r),
       rounded half to even; integral for N = 10, 20).

Inference sigmas sigma_0 .. sigma_{N-1} (non-Karras): sigma_k = float32(interp(t_k)) with interp
the piecewise linear interpolation of the training sigmas in t (numpy.interp over
xp = 0..T-1, fp = s, in f64): for integral t, interp(t) = s_t exactly; otherwise, with j = floor(t),
    interp(t) = (s_{j+1} - s_j) * (t - j) + s_j        (f64; operations in this order).
  Note: linear in t, NOT in log sigma.

Karras sigmas (use_karras_sigmas=True; Euler and Heun): the spaced timesteps t_k are computed as
above and interp'ed (f64, NOT rounded), then
    sigma_max = interp(t_0), sigma_min = interp(t_{N-1})   (f64; for linspace s_999 and s_0)
  so the spacing does matter: it sets the end points (see the runs with "leading"/"trailing").
    ramp_i = numpy.linspace(0, 1, N) = i * (1 / (N - 1)) in f64 (ramp_{N-1} = 1 exactly)
    sigma_i = (M + ramp_i * (m - M)) ** 7          (f64; M = sigma_max ** (1/7),
                                                    m = sigma_min ** (1/7), 1/7 the f64 quotient)
  ("karras_sigmas_f64") and each sigma_i is mapped back to a timestep (_sigma_to_t, log-sigma
  interpolation, "karras_timesteps_f64"):
    lam = ln(max(sigma_i, 1e-10))                  (f64)
    K = the largest j with f64(l_j) <= lam (0 if there is none), then K = min(K, T - 2)
    w = (l_K - lam) / f64(float32(l_K - l_{K+1}))  (f64, but the denominator is the float32
                                                    difference of the two float32 log sigmas)
    w = clip(w, 0, 1);  t_i = (1 - w) * K + w * (K + 1)   (f64)
  Then the held timesteps are float32(t_i) and the held sigmas float32(sigma_i). The timesteps
  stay fractional (no int cast, unlike DPMSolverMultistepScheduler), so none repeat, even with
  squaredcos_cap_v2 (whose first Karras timesteps crowd just below 999: 999, 998.79, 998.56, ..
  for N = 10), and no run needs set_begin_index. The end timesteps come back slightly off the
  grid: t_0 = 998.999999961588 (f64; float32 999) for squaredcos_cap_v2, the last one
  6.2028647e-07 instead of 0 for squaredcos_cap_v2 and 98.99999 instead of 99 for linear
  "trailing".

Held tables after set_timesteps (final_sigmas_type "zero": the last sigma is 0):
    Euler, Euler ancestral: timesteps [t_0 .. t_{N-1}] (N), sigmas [sigma_0 .. sigma_{N-1}, 0]
      (N+1).
    Heun: every timestep but the first and every sigma but the first and the trailing 0 repeated:
      timesteps [t_0, t_1, t_1, t_2, t_2, .., t_{N-1}, t_{N-1}] (2N-1),
      sigmas [sigma_0, sigma_1, sigma_1, .., sigma_{N-1}, sigma_{N-1}, 0] (2N).
  The loop runs over the held timesteps: N model calls for Euler / Euler ancestral, 2N-1 for Heun.
  Call i uses sigma table index i (the step index; it starts at the index of t_0 in the held
  timesteps -- the second match if t_0 occurs twice -- unless set_begin_index(0) was called, and
  goes up by one per step() call).

init_noise_sigma (a 0-d float32 tensor): m = the largest entry of the held sigmas (= sigma_0);
  m for "linspace" and "trailing", float32 sqrt(m*m + 1) for "leading" (also with Karras: the
  rule follows timestep_spacing only). x = x_T * init_noise_sigma (float32).

scale_model_input at call i: sigma = sigmas[i]; c = sqrt(sigma*sigma + 1) (float32 0-d ops:
  product, sum, sqrt); network input = x / c (float32 elementwise). The network gets t =
  timesteps[i] (a float32 0-d tensor: "model_t").

Data prediction x0 from out at sigma (all float32; "x0_pred" = step()'s pred_original_sample):
    epsilon:      x0 = x - sigma * out
    sample:       x0 = out
    v_prediction: x0 = out * (-sigma / sqrt(sigma*sigma + 1)) + x / (sigma*sigma + 1)
                  (the scalar -sigma / sqrt(..) and sigma*sigma + 1 are 0-d float32 values)

Euler step at call i (sigma = sigmas[i], sigma' = sigmas[i+1]):
    gamma = min(s_churn / N, sqrt(2) - 1) (Python f64) if s_tmin <= sigma <= s_tmax (the test is
      on sigma, not on t, whatever diffusers' docstring says), else 0;
    sigma_hat = sigma * float32(gamma + 1) (float32: gamma + 1 in f64, rounded to float32, then
      a float32 product; sigma_hat = sigma when gamma = 0);
    if gamma > 0 (only then is noise drawn): x = x + (eps * s_noise) * sqrt(sigma_hat*sigma_hat
      - sigma*sigma), eps the next stored noise (s_noise = 1 here);
    x0 as above with sigma_hat for epsilon (x - sigma_hat * out), but with sigma (NOT sigma_hat)
      for v_prediction; sample: out;
    d = (x - x0) / sigma_hat;  dt = sigma' - sigma_hat;  x_next = x + d * dt.
    (x is the churned sample from here on.) All three prediction types are accepted.
Euler ancestral step at call i (sigma = sigmas[i], sigma' = sigmas[i+1]):
    x0 as above with sigma (epsilon, v_prediction; "sample" raises NotImplementedError from step()
      after the first model call -- recorded as the error);
    sigma_up = sqrt(sigma'*sigma' * (sigma*sigma - sigma'*sigma') / (sigma*sigma)) (float32, the
      product first, then the division);  sigma_down = sqrt(sigma'*sigma' - sigma_up*sigma_up);
    d = (x - x0) / sigma;  dt = sigma_down - sigma;  x_next = (x + d * dt) + eps * sigma_up,
    eps the next stored noise, drawn at EVERY step, the last one too (sigma' = 0 gives
    sigma_up = sigma_down = 0 there, so x_next = x - d * sigma).
Heun (2N-1 calls; "stages" records 1 or 2 per call):
    stage 1 at even calls i = 2k (k = 0..N-1): sigma = sigmas[i] = sigma_k, sigma' = sigmas[i+1]
      = sigma_{k+1} (0 for k = N-1); x0 from out at sigma; d1 = (x - x0) / sigma;
      dt = sigma' - sigma; returns x~ = x + d1 * dt (an Euler step) and keeps x, d1, dt.
    stage 2 at odd calls i = 2k+1 (k = 0..N-2): the network got scale_model_input(x~) at
      sigmas[i] = sigma_{k+1} and t = timesteps[i] = t_{k+1}; x0 from out at sigma_{k+1} (epsilon
      x~ - sigma_{k+1} * out; v_prediction with sigma_{k+1}; sample: out);
      d2 = (x~ - x0) / sigma_{k+1};  d = (d1 + d2) / 2;  returns x + d * dt (x, dt of stage 1).
    The last call (i = 2N-2) is a stage-1 Euler step onto sigma = 0, with no second stage.
Final step: the last sigma is 0, so the last step is x + d * (0 - sigma) (Euler: sigma_hat),
  approximately x0 but not bit for bit.

Format
------
A tensor is {"shape": [...], "data": [flat, row-major floats]}; each float is the shortest
decimal that parses back to the same float32 (parse as f32, or as f64 then cast). Lists of
float32 values ("sigmas", "timesteps", ...) are written the same way. Values marked f64 are
float64, written as Python's repr (the shortest decimal that round-trips as f64).

    {"source": str,
     "network": {prediction_type: [A, B]},
     "inputs": {"x_T": tensor (2,2,3,3) N(0,1), float32,
                "noises": tensor (40,2,2,3,3) N(0,1), float32},
     "schedules": {beta_schedule: schedule},
     "zero_snr_schedules": {beta_schedule: zero_snr_schedule},
     "runs": [run]}

schedule ("linear" / "squaredcos_cap_v2", see above):
    {"alphas_cumprod": [1000 float32]   what the schedulers hold
     "alphas_cumprod_f64": [1000 f64]   cumprod(1 - betas) with the betas computed in float64
                                        (torch.linspace(..., float64) / betas_for_alpha_bar's own
                                        float64 Python floats) and the product in float64
     "sigmas": [1000 float32]           s_j (the float32 training sigmas as torch computes them;
                                        ascending in j)
     "log_sigmas": [1000 float32]}      l_j
zero_snr_schedule: {"alphas_cumprod": [1000 float32] (last = 2**-24), "sigmas": [1000 float32],
                    "log_sigmas": [1000 float32]}, the same quantities with rescale_betas_zero_snr.

run:
    {"scheduler": "euler"|"euler_ancestral"|"heun",
     "prediction_type": "epsilon"|"sample"|"v_prediction", "num_inference_steps": 10|20,
     "timestep_spacing": "linspace"|"leading"|"trailing", "steps_offset": 0|1,
     "beta_schedule": str, "use_karras_sigmas": bool, "rescale_betas_zero_snr": bool,
     "s_churn": float|null, "s_tmin": float|null, "s_tmax": float|null, "s_noise": float|null
                              Euler's step() arguments where passed (null: not passed, i.e. no
                              churn); never passed to the other schedulers
     "begin_index": null|0    0: set_begin_index(0) was called before the loop
     and, if the constructor or set_timesteps rejected the configuration, only
     "error": str, "error_at": "init"
     else
     "timesteps": [float32]   the held timesteps (N, Heun 2N-1), descending (Heun: repeated)
     "sigmas": [float32]      the held sigmas (N+1, Heun 2N), last 0
     "init_noise_sigma": float32
     "karras_sigmas_f64": [f64], "karras_timesteps_f64": [f64]
                              Karras runs only: the N float64 sigmas _convert_to_karras returned
                              and the N float64 timesteps _sigma_to_t returned, before the
                              float32 casts
     and then either
     "error": str, "error_at": "loop"     the loop raised (recorded as TypeName: message)
     or
     "model_t": [float32]     the timestep the network got at each call (= "timesteps")
     "step_index": [int]      the sigma table index each step() call used (0, 1, 2, ...)
     "stages": [int]          Heun only (else null): 1 or 2 per call, see above
     "model_in": tensor (C,2,2,3,3)  the network input at each call (scale_model_input's result);
                                     C = N (Heun: 2N-1)
     "x0_pred": tensor (C,2,2,3,3)   step()'s pred_original_sample at each call
     "samples": tensor (C,2,2,3,3)   step()'s prev_sample at each call (Heun stage 1: x~)
     "final": tensor (2,2,3,3)       the last sample (= samples[C-1])
     "x_T": "x_T", "noises": "noises"|null
     "num_noise_calls": int, "noise_steps": [int]  how often randn_tensor was called and at
                                                   which step() calls (0-based call index)}

Precision: diffusers computes all of this in float32 (torch tensors, 0-d ones for the per-step
scalars); only set_timesteps goes through numpy float64 (np.interp, the Karras formula,
_sigma_to_t) before casting the sigmas and timesteps to float32. Torch's float32 sqrt on this CPU
is not correctly rounded (1 ulp off in about 17% of arguments, also for 0-d tensors and for
x ** 0.5, which torch computes as sqrt), and the training sigmas inherit that, so compare with a
tolerance rather than bit for bit. A float64 re-implementation of the formulas above from the
recorded float32 tables agrees with the recorded samples to about 4e-6 (relative to
max(1, max |sample|)) for "linear". With "squaredcos_cap_v2" the first step starts from
sigma_0 = 20291 (x ~ 2e4) and lands on values of order 1, so diffusers' own float32 rounding
there is ~3e-4 of the result (a float32 emulation of that step in the order given above matches
bit for bit), and Heun's second stage divides it by a small sigma: its cosine runs differ from a
float64 computation by up to ~4e-2 relative. Either compute in float32 in diffusers' order or
scale the tolerance for those runs.
"""
import contextlib
import json
import os
import sys
from importlib.metadata import version
from unittest import mock

import numpy as np
import torch

import diffusers
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a_mod
from diffusers.schedulers import scheduling_euler_discrete as euler_mod
from diffusers.schedulers import scheduling_heun_discrete as heun_mod

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_diffusers_reference import schedule_f64  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "diffusion-sample", "tests", "it", "fixtures",
    "k_schedulers.json")

SOURCE = (f"huggingface/diffusers {diffusers.__version__} EulerDiscreteScheduler, "
          f"EulerAncestralDiscreteScheduler, HeunDiscreteScheduler (PyPI; torch {version('torch')}, "
          f"numpy {version('numpy')}) via tools/gen_k_schedulers_reference.py")

T_TRAIN, BETA_START, BETA_END = 1000, 0.0001, 0.02
SHAPE = (2, 2, 3, 3)
NUM_NOISES = 40
NETWORK = {"epsilon": (0.9, 0.0003), "sample": (0.5, -0.0001), "v_prediction": (0.7, 0.0002)}
SCHEDULERS = {"euler": (EulerDiscreteScheduler, euler_mod), "euler_ancestral": (EulerAncestralDiscreteScheduler, euler_a_mod),
              "heun": (HeunDiscreteScheduler, heun_mod)}
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")

torch.set_grad_enabled(False)


def f32_list(x):
    """float32 values as Python floats, each the shortest decimal that round-trips as float32."""
    a = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float32)
    assert np.all(np.isfinite(a)), "non-finite reference value"
    data = [float(str(v)) for v in a.reshape(-1)]
    assert np.array_equal(np.array(data, dtype=np.float64).astype(np.float32), a.reshape(-1))
    return data


def tensor(x):
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    assert a.dtype == np.float32, a.dtype
    return {"shape": list(a.shape), "data": f32_list(a)}


def f64_list(x):
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    assert np.all(np.isfinite(a))
    return [float(v) for v in a]


def net(x, t, prediction_type):
    """The stand-in network: A*x + B*float32(t), all float32."""
    a, b = (torch.tensor(v, dtype=torch.float32) for v in NETWORK[prediction_type])
    assert x.dtype == torch.float32
    s = torch.as_tensor(t).to(torch.float32)
    if prediction_type == "sample":
        return torch.tensor(0.5, dtype=torch.float32) * x - torch.tensor(0.0001, dtype=torch.float32) * s
    return a * x + b * s


def betas_f64(name):
    """The schedule's betas in float64, as tools/gen_diffusers_reference.py computes them (for the
    cosine schedule checked against these schedulers' own float32 betas, which they cast from the
    float64 values; the linear betas come from a float32 linspace, an ulp away)."""
    b = schedule_f64(name, T_TRAIN)
    if name == "squaredcos_cap_v2":
        for _, mod in SCHEDULERS.values():
            assert torch.equal(b.float(), mod.betas_for_alpha_bar(T_TRAIN))
    return b


class FixedNoise:
    """Stands in for a scheduler module's randn_tensor: returns noises[k] at call k."""

    def __init__(self, noises, counter):
        self.noises, self.calls, self.steps, self.counter = noises, 0, [], counter

    def __call__(self, shape, generator=None, device=None, dtype=None, **kw):
        assert tuple(shape) == SHAPE and dtype == torch.float32, (shape, dtype)
        assert generator is not None  # the pipeline's generator still reaches the call
        out = torch.from_numpy(self.noises[self.calls].copy())
        self.calls += 1
        self.steps.append(self.counter[0])
        return out


def table(s):
    """The training tables a scheduler holds: alphas_cumprod, sigmas and their log (float32)."""
    assert s.alphas_cumprod.dtype == torch.float32
    sig = (((1 - s.alphas_cumprod) / s.alphas_cumprod) ** 0.5).numpy()  # as set_timesteps does
    log_sig = np.log(sig)
    assert sig.dtype == np.float32 and log_sig.dtype == np.float32
    return s.alphas_cumprod.numpy().copy(), sig, log_sig


def interp(t, sig):
    """np.interp of the training sigmas at t, in float64 (as set_timesteps does)."""
    return np.interp(np.asarray(t), np.arange(0, len(sig)), sig)


rng = np.random.default_rng(20240612)
x_T_np = rng.standard_normal(SHAPE).astype(np.float32)
noises_np = rng.standard_normal((NUM_NOISES, *SHAPE)).astype(np.float32)

ref = {"source": SOURCE,
       "network": {k: f32_list(np.array(ab, dtype=np.float32)) for k, ab in NETWORK.items()},
       "inputs": {"x_T": tensor(x_T_np), "noises": tensor(noises_np)},
       "schedules": {}, "zero_snr_schedules": {}, "runs": []}

TABLES = {}
for name in BETA_SCHEDULES:
    held = []
    for cls, _ in SCHEDULERS.values():
        held.append(table(cls(num_train_timesteps=T_TRAIN, beta_start=BETA_START, beta_end=BETA_END,
                              beta_schedule=name)))
    for other in held[1:]:  # the three schedulers hold the same tables
        assert all(np.array_equal(a, b) for a, b in zip(held[0], other))
    ac, sig, log_sig = held[0]
    ac64 = torch.cumprod(1.0 - betas_f64(name), dim=0)
    d = (ac64 - torch.from_numpy(ac).double()).abs().max().item()
    print(f"{name}: max |alphas_cumprod_f64 - alphas_cumprod| = {d:.3g}, sigma range [{sig[0]:.6g}, {sig[-1]:.6g}]")
    TABLES[(name, False)] = (sig, log_sig)
    ref["schedules"][name] = {"alphas_cumprod": f32_list(ac), "alphas_cumprod_f64": f64_list(ac64),
                              "sigmas": f32_list(sig), "log_sigmas": f32_list(log_sig)}

    held = []
    for key in ("euler", "euler_ancestral"):
        held.append(table(SCHEDULERS[key][0](num_train_timesteps=T_TRAIN, beta_start=BETA_START, beta_end=BETA_END,
                                             beta_schedule=name, rescale_betas_zero_snr=True)))
    assert all(np.array_equal(a, b) for a, b in zip(*held))
    ac, sig, log_sig = held[0]
    assert ac[-1] == np.float32(2.0 ** -24)
    print(f"{name} zero SNR: alphas_cumprod[-1] = 2**-24, sigma range [{sig[0]:.6g}, {sig[-1]:.6g}]")
    TABLES[(name, True)] = (sig, log_sig)
    ref["zero_snr_schedules"][name] = {"alphas_cumprod": f32_list(ac), "sigmas": f32_list(sig),
                                       "log_sigmas": f32_list(log_sig)}


def run(sched, prediction_type, n, spacing, beta_schedule, karras=False, steps_offset=0, zero_snr=False,
        churn=None, begin_index=None):
    cfg = {"scheduler": sched, "prediction_type": prediction_type, "num_inference_steps": n,
           "timestep_spacing": spacing, "steps_offset": steps_offset, "beta_schedule": beta_schedule,
           "use_karras_sigmas": karras, "rescale_betas_zero_snr": zero_snr}
    churn_kw = dict(zip(("s_churn", "s_tmin", "s_tmax", "s_noise"), churn)) if churn else {}
    assert not churn or sched == "euler"
    cfg.update({k: churn_kw.get(k) for k in ("s_churn", "s_tmin", "s_tmax", "s_noise")})
    cfg["begin_index"] = begin_index
    label = " ".join(f"{k}={v}" for k, v in cfg.items() if v not in (None, False, 0) or k == "num_inference_steps")

    cls, mod = SCHEDULERS[sched]
    kw = {}
    if karras:
        kw["use_karras_sigmas"] = True
    if zero_snr:
        kw["rescale_betas_zero_snr"] = True
    try:
        s = cls(num_train_timesteps=T_TRAIN, beta_start=BETA_START, beta_end=BETA_END, beta_schedule=beta_schedule,
                prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=steps_offset, **kw)
    except Exception as e:  # noqa: BLE001
        cfg.update({"error": f"{type(e).__name__}: {e}", "error_at": "init"})
        print("  rejected:", label, "--", cfg["error"])
        return cfg
    assert s.config.prediction_type == prediction_type and s.config.steps_offset == steps_offset
    if sched != "euler_ancestral":
        assert s.config.use_karras_sigmas == karras and not s.config.use_exponential_sigmas
        assert not s.config.use_beta_sigmas
    if sched == "euler":
        assert s.config.final_sigmas_type == "zero" and s.config.interpolation_type == "linear"
        assert s.config.timestep_type == "discrete" and s.config.sigma_min is None and s.config.sigma_max is None
    if sched == "heun":
        assert not s.config.clip_sample

    # Capture the float64 intermediates of the Karras path (instance attributes shadow the methods).
    captured = {"karras": None, "t": []}
    if karras:
        to_karras, sigma_to_t = s._convert_to_karras, s._sigma_to_t

        def conv(*a, **kw):
            out = to_karras(*a, **kw)
            captured["karras"] = np.array(out, dtype=np.float64)
            return out

        def s2t(*a, **kw):
            out = sigma_to_t(*a, **kw)
            captured["t"].append(float(out))
            return out

        s._convert_to_karras, s._sigma_to_t = conv, s2t

    s.set_timesteps(n)
    heun = sched == "heun"
    calls = 2 * n - 1 if heun else n
    assert s.timesteps.dtype == torch.float32 and s.sigmas.dtype == torch.float32
    assert len(s.timesteps) == calls and len(s.sigmas) == calls + 1 and s.sigmas[-1].item() == 0.0
    ts, sig = s.timesteps.numpy(), s.sigmas.numpy()
    # The distinct values: Heun repeats all but the first timestep and all but the first and last sigma.
    ts_n = np.concatenate([ts[:1], ts[1::2]]) if heun else ts
    sig_n = np.concatenate([sig[:1], sig[1:-1:2], sig[-1:]]) if heun else sig
    if heun:
        assert np.array_equal(ts[1::2], ts[2::2]) and np.array_equal(sig[1:-1:2], sig[2:-1:2])
    assert len(ts_n) == n and len(sig_n) == n + 1
    cfg["timesteps"] = f32_list(ts)
    cfg["sigmas"] = f32_list(sig)
    init = s.init_noise_sigma
    assert isinstance(init, torch.Tensor) and init.dtype == torch.float32 and init.dim() == 0
    m = s.sigmas.max()
    assert m.item() == sig[0]
    expect = m if spacing in ("linspace", "trailing") else (m ** 2 + 1) ** 0.5
    assert init.item() == expect.item()
    cfg["init_noise_sigma"] = float(str(init.numpy()))
    train_sig, _ = TABLES[(beta_schedule, zero_snr)]
    if karras:
        assert captured["karras"] is not None and len(captured["t"]) == n
        assert np.array_equal(captured["karras"].astype(np.float32), sig_n[:-1])
        assert np.array_equal(np.array(captured["t"]).astype(np.float32), ts_n)
        cfg["karras_sigmas_f64"] = f64_list(captured["karras"])
        cfg["karras_timesteps_f64"] = f64_list(captured["t"])
    else:
        # The sigmas are the float64 np.interp of the training sigmas at the float32 timesteps.
        assert np.array_equal(sig_n[:-1], interp(ts_n, train_sig).astype(np.float32))
    if len(np.unique(ts_n)) != n:
        print("  repeated timesteps:", label)
    if begin_index is not None:
        s.set_begin_index(begin_index)

    counter = [0]
    noise = FixedNoise(noises_np, counter)
    gen = torch.Generator().manual_seed(0)
    step_kw = dict(churn_kw)
    if not heun:
        step_kw["generator"] = gen
    x = torch.from_numpy(x_T_np.copy()) * init
    assert x.dtype == torch.float32
    model_t, model_in, x0_preds, samples, step_index, stages = [], [], [], [], [], []
    try:
        # (Heun's module draws no noise: it has no randn_tensor.)
        with mock.patch.object(mod, "randn_tensor", noise) if not heun else contextlib.nullcontext():
            for i, t in enumerate(s.timesteps):
                counter[0] = i
                assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.dim() == 0
                inp = s.scale_model_input(x, t)
                assert inp.dtype == torch.float32
                model_t.append(t.clone())
                model_in.append(inp.clone())
                out = net(inp, t, prediction_type)
                step_index.append(s.step_index)
                if heun:
                    stages.append(1 if s.state_in_first_order else 2)
                res = s.step(out, t, x, **step_kw)
                x = res.prev_sample
                assert x.dtype == torch.float32 and res.pred_original_sample is not None
                x0_preds.append(res.pred_original_sample.clone())
                samples.append(x.clone())
    except Exception as e:  # noqa: BLE001
        cfg.update({"error": f"{type(e).__name__}: {e}", "error_at": "loop"})
        print("  error:", label, "--", cfg["error"])
        return cfg
    model_t = f32_list(torch.stack(model_t))
    assert model_t == cfg["timesteps"]
    if begin_index is None and len(np.unique(ts_n)) == n:
        assert step_index == list(range(calls)), step_index
    if heun:
        assert stages == [1] + [2, 1] * (n - 1)
    if sched == "euler_ancestral":
        assert noise.calls == n and noise.steps == list(range(n))
    elif not churn:
        assert noise.calls == 0
    cfg.update({"model_t": model_t, "step_index": step_index, "stages": stages if heun else None,
                "model_in": tensor(torch.stack(model_in)), "x0_pred": tensor(torch.stack(x0_preds)),
                "samples": tensor(torch.stack(samples)), "final": tensor(samples[-1]),
                "x_T": "x_T", "noises": "noises" if noise.calls else None,
                "num_noise_calls": noise.calls, "noise_steps": noise.steps})
    return cfg


def add(*a, **kw):
    r = run(*a, **kw)
    ref["runs"].append(r)
    return r


PREDS = ("epsilon", "sample", "v_prediction")
for sched in SCHEDULERS:
    for pred in PREDS:
        for n in (10, 20):
            for spacing in ("linspace", "leading", "trailing"):
                for bs in BETA_SCHEDULES:
                    add(sched, pred, n, spacing, bs)
# Karras sigmas (with linspace; a few with the other spacings below, which move the end points).
# Where the plain loop fails it is rerun with begin_index 0 (never, with diffusers 0.42.1).
for sched in SCHEDULERS:
    for pred in PREDS:
        for n in (10, 20):
            for bs in BETA_SCHEDULES:
                r = add(sched, pred, n, "linspace", bs, karras=True)
                if r.get("error_at") == "loop":
                    add(sched, pred, n, "linspace", bs, karras=True, begin_index=0)
for sched in ("euler", "heun"):
    for spacing in ("leading", "trailing"):
        for bs in BETA_SCHEDULES:
            add(sched, "epsilon", 10, spacing, bs, karras=True)
# "leading" with steps_offset 1 (as Stable Diffusion's configs have).
for sched in SCHEDULERS:
    for n in (10, 20):
        add(sched, "epsilon", n, "leading", "linear", steps_offset=1)
    add(sched, "v_prediction", 10, "leading", "squaredcos_cap_v2", steps_offset=1)
# Zero terminal SNR: v_prediction, trailing (the first timestep is 999, the sigma ~4096).
for sched in SCHEDULERS:
    for bs in BETA_SCHEDULES:
        for n in ((10, 20) if sched != "heun" else (10,)):
            add(sched, "v_prediction", n, "trailing", bs, zero_snr=True)
# Euler with churn (s_churn, s_tmin, s_tmax, s_noise): noise only where s_tmin <= sigma <= s_tmax;
# s_churn / N capped at sqrt(2) - 1 in the last ones.
CHURNS = [(2.0, 0.05, 50.0, 1.0), (1.0, 0.0, 1.0e6, 1.0), (30.0, 0.0, 1.0e6, 1.0)]
for pred in PREDS:
    add("euler", pred, 10, "linspace", "linear", churn=CHURNS[0])
add("euler", "epsilon", 20, "linspace", "linear", churn=CHURNS[1])
add("euler", "v_prediction", 10, "trailing", "squaredcos_cap_v2", churn=CHURNS[0])
add("euler", "epsilon", 10, "linspace", "linear", karras=True, churn=CHURNS[2])
add("euler", "v_prediction", 20, "leading", "linear", churn=CHURNS[2])

# The noise must have gone in: the same runs with other noise end elsewhere.
for sched, churn in (("euler_ancestral", None), ("euler", CHURNS[0])):
    a = run(sched, "epsilon", 10, "linspace", "linear", churn=churn)
    saved = noises_np
    noises_np = noises_np[::-1].copy()
    b = run(sched, "epsilon", 10, "linspace", "linear", churn=churn)
    noises_np = saved
    assert a["final"] != b["final"] and a["num_noise_calls"] > 0
    c = run(sched, "epsilon", 10, "linspace", "linear", churn=churn)
    assert a["final"] == c["final"]
for r in ref["runs"]:
    if r["s_churn"] is not None and "error" not in r:
        assert 0 < r["num_noise_calls"] <= r["num_inference_steps"]

os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(ref, f, separators=(",", ":"), allow_nan=False)
runs = ref["runs"]
ok = [r for r in runs if "error" not in r]
print(f"wrote {OUT}: {len(runs)} runs ({len(ok)} complete, {len(runs) - len(ok)} errors), "
      f"{os.path.getsize(OUT)} bytes")
for sched in SCHEDULERS:
    mine = [r for r in runs if r["scheduler"] == sched]
    done = [r for r in mine if "error" not in r]
    print(f"  {sched}: {len(mine)} runs, {len(done)} complete, {sum(len(r['model_t']) for r in done)} model calls, "
          f"{sum(r['num_noise_calls'] for r in done)} noise draws")
