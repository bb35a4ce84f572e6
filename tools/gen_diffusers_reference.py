#!/usr/bin/env python3
"""Generate golden values from huggingface diffusers' own schedulers for diffusion-core's tests.

Imports diffusers (installed from PyPI) -- nothing of it is copied here -- and writes
crates/diffusion-core/tests/it/diffusers.json: the inference timesteps that DDIMScheduler and
EulerDiscreteScheduler pick for each timestep_spacing, and the betas / alphas_cumprod of
rescale_betas_zero_snr=True ("zero terminal SNR", arXiv 2305.08891, Algorithm 1).

Usage:
    python3 -m venv venv && venv/bin/pip install numpy torch diffusers==0.42.1
    venv/bin/python tools/gen_diffusers_reference.py [out.json]

(Generated with diffusers 0.42.1, torch 2.15.0, numpy 2.4.6; the exact versions used are
recorded in the file's "source" field.)

Format
------
    {"source": str,
     "spacings": [case],
     "zero_snr": [entry]}

case (one per num_train_timesteps x num_inference_steps x timestep_spacing x steps_offset):
    {"num_train_timesteps": int, "num_inference_steps": int, "timestep_spacing": str,
     "steps_offset": int,
     "timesteps": [int]          DDIMScheduler(...).set_timesteps(n).timesteps, diffusers' order
                                 (descending); absent when DDIM rejects the case, see "error"
     "error": str                only when DDIMScheduler rejected the case
     "euler_timesteps": [float]  EulerDiscreteScheduler(...).timesteps (float32 values); absent
                                 when Euler rejects the case, see "euler_error"
     "euler_error": str}         only when EulerDiscreteScheduler rejected the case

entry (one per beta_schedule x num_train_timesteps):
    {"beta_schedule": str, "num_train_timesteps": int,
     "betas": [float], "alphas_cumprod": [float]
                   what DDIMScheduler(..., rescale_betas_zero_snr=True) holds (float32 tensors)
     "betas_input": [float]
                   what DDIMScheduler(...) holds without the rescale (float32)
     "betas_input_f64": [float]
                   the schedule's betas in float64, before rescaling
     "betas_f64": [float], "alphas_cumprod_f64": [float]
                   diffusers' rescale_zero_terminal_snr applied to betas_input_f64 in float64,
                   and cumprod(1 - betas_f64) in float64}

Every float is written as Python's repr, the shortest decimal that parses back to the same
float64 (float32 values are exactly representable, so parse as f64 and cast to f32 for those).
"""
import json
import math
import os
import sys
from importlib.metadata import version
from unittest import mock

import numpy as np
import torch

import diffusers
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from diffusers.schedulers import scheduling_ddim

OUT = sys.argv[1] if __name__ == "__main__" and len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "crates", "diffusion-core", "tests", "it", "diffusers.json")

SOURCE = (f"huggingface/diffusers {diffusers.__version__} (PyPI; torch {version('torch')}, "
          f"numpy {version('numpy')}) via tools/gen_diffusers_reference.py")

# diffusers' defaults for DDIMScheduler.
BETA_START, BETA_END = 0.0001, 0.02


def floats(x):
    return [float(v) for v in (x.tolist() if isinstance(x, torch.Tensor) else x)]


def schedule_f64(name, T):
    """The schedule's betas in float64, before any rescale."""
    if name == "linear":
        return torch.linspace(BETA_START, BETA_END, T, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, T, dtype=torch.float64) ** 2
    if name == "squaredcos_cap_v2":
        # betas_for_alpha_bar computes in Python floats (float64) and only casts to float32 when it
        # builds its result tensor; capture that float64 list by making torch.tensor keep float64.
        real = torch.tensor

        def tensor64(data, dtype=None, **kw):
            return real(data, dtype=torch.float64, **kw)

        with mock.patch.object(scheduling_ddim.torch, "tensor", tensor64):
            b = scheduling_ddim.betas_for_alpha_bar(T)
        assert b.dtype == torch.float64
        # It must be what diffusers' own (float32) call gives, once cast.
        assert torch.equal(b.float(), scheduling_ddim.betas_for_alpha_bar(T))
        # And the Glide cosine formula, independently.
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        assert b.tolist() == [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
        return b
    raise ValueError(name)


def main():
    ref = {"source": SOURCE, "spacings": [], "zero_snr": []}

    for T in (1000, 50, 4000):
        ns = sorted({1, 2, 7, 10, 20, 50, T})
        for n in ns:
            for spacing in ("linspace", "leading", "trailing"):
                for offset in (0, 1):
                    case = {"num_train_timesteps": T, "num_inference_steps": n, "timestep_spacing": spacing,
                            "steps_offset": offset}
                    try:
                        s = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
                        s.set_timesteps(n)
                        assert s.timesteps.dtype == torch.int64
                        case["timesteps"] = [int(t) for t in s.timesteps.tolist()]
                    except Exception as e:  # noqa: BLE001
                        case["error"] = f"{type(e).__name__}: {e}"
                    try:
                        e_s = EulerDiscreteScheduler(num_train_timesteps=T, timestep_spacing=spacing,
                                                     steps_offset=offset)
                        e_s.set_timesteps(n)
                        assert e_s.timesteps.dtype == torch.float32
                        case["euler_timesteps"] = floats(e_s.timesteps)
                    except Exception as e:  # noqa: BLE001
                        case["euler_error"] = f"{type(e).__name__}: {e}"
                    ref["spacings"].append(case)

    for name in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        for T in (1000, 50):
            s = DDIMScheduler(num_train_timesteps=T, beta_schedule=name, rescale_betas_zero_snr=True)
            plain = DDIMScheduler(num_train_timesteps=T, beta_schedule=name)
            b_in = schedule_f64(name, T)
            # diffusers builds the float32 schedule in float32, so it may differ from the float64 one by
            # an ulp or so; say by how much.
            d = (b_in - plain.betas.double()).abs().max().item()
            print(f"{name} T={T}: max |betas_input_f64 - betas_input| = {d:.3g}")
            b = scheduling_ddim.rescale_zero_terminal_snr(b_in.clone())
            assert b.dtype == torch.float64
            ac = torch.cumprod(1.0 - b, dim=0)
            ref["zero_snr"].append({
                "beta_schedule": name, "num_train_timesteps": T,
                "betas": floats(s.betas), "alphas_cumprod": floats(s.alphas_cumprod),
                "betas_input": floats(plain.betas),
                "betas_input_f64": floats(b_in), "betas_f64": floats(b), "alphas_cumprod_f64": floats(ac),
            })

    os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(ref, f, separators=(",", ":"), allow_nan=False)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
