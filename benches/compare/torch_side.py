"""PyTorch side of `cargo xtask bench-compare`: the same work as `benches/examples/compare.rs`, in
PyTorch eager, on a network built to match ours layer for layer (parameter counts are checked).

    python torch_side.py --model tiny-mnist|cifar10_iddpm|mlp --batch B --reps R --config CONFIG.json

CONFIG.json is `diffusion model --preset NAME --format json` (our UNet's configuration); the MLP
needs none. Prints one JSON object: median/min/max seconds of `train` (forward, L_hybrid — L_simple
for the MLP — backward, AdamW), `forward` and `ddim10`, the parameter count, the resident memory
right after `import torch` and the peak resident memory of the process.

This file is our own code, written from the papers' descriptions of the ADM UNet and of the hybrid
objective; it is a benchmark dependency only (never a test or CI dependency).
"""

import argparse
import json
import math
import resource
import time


def rss_mb(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


t_import = time.perf_counter()
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

IMPORT_S = time.perf_counter() - t_import
IMPORT_RSS_MB = rss_mb()


def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero(m):
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, dropout, out_ch, scale_shift, groups, up=False, down=False):
        super().__init__()
        self.in_norm = nn.GroupNorm(groups, ch)
        self.in_conv = nn.Conv2d(ch, out_ch, 3, padding=1)
        self.up, self.down = up, down
        self.emb = nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch)
        self.out_norm = nn.GroupNorm(groups, out_ch)
        self.drop = nn.Dropout(dropout)
        self.out_conv = zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)
        self.scale_shift = scale_shift

    def resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, emb):
        h = F.silu(self.in_norm(x))
        h = self.resample(h)
        x = self.resample(x)
        h = self.in_conv(h)
        e = self.emb(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch, heads, groups, new_order):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj = zero(nn.Conv1d(ch, ch, 1))
        self.heads, self.new_order = heads, new_order

    def forward(self, x, emb=None):
        b, c, hh, ww = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        n, width, length = qkv.shape
        ch = width // (3 * self.heads)
        if self.new_order:
            q, k, v = qkv.chunk(3, dim=1)
            q, k, v = (z.reshape(n * self.heads, ch, length) for z in (q, k, v))
        else:
            q, k, v = qkv.reshape(n * self.heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(n, -1, length)
        return (x + self.proj(a)).reshape(b, c, hh, ww)


class Down(nn.Module):
    def __init__(self, ch, conv):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if conv else nn.AvgPool2d(2)

    def forward(self, x, emb=None):
        return self.op(x)


class Up(nn.Module):
    def __init__(self, ch, conv):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1) if conv else None

    def forward(self, x, emb=None):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Seq(nn.ModuleList):
    def forward(self, x, emb):
        for m in self:
            x = m(x, emb)
        return x


class Stem(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x, emb=None):
        return self.conv(x)


class UNet(nn.Module):
    """The ADM UNet with the options of our UNetConfig (AdaGN, BigGAN up/down, heads, dropout)."""

    def __init__(self, c):
        super().__init__()
        mc, g = c["model_channels"], c["norm_groups"]
        ted = 4 * mc
        self.mc = mc
        self.time = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        self.label = nn.Embedding(c["num_classes"], ted) if c.get("num_classes") else None
        attn_ds = {c["image_size"] // r for r in c["attention_resolutions"]}
        heads = c["num_heads"]
        heads_up = c.get("num_heads_upsample") or heads
        hc = c.get("num_head_channels")
        new_order = c.get("attention_order", "legacy") == "new"
        ss, ud, drop = c["use_scale_shift_norm"], c["resblock_updown"], c["dropout"]

        def attn(ch, h):
            return Attention(ch, ch // hc if hc else h, g, new_order)

        ch = c["channel_mult"][0] * mc
        self.inputs = nn.ModuleList([Seq([Stem(c["in_channels"], ch)])])
        chans, ds = [ch], 1
        levels = len(c["channel_mult"])
        for level, mult in enumerate(c["channel_mult"]):
            for _ in range(c["num_res_blocks"]):
                layers = [ResBlock(ch, ted, drop, mult * mc, ss, g)]
                ch = mult * mc
                if ds in attn_ds:
                    layers.append(attn(ch, heads))
                self.inputs.append(Seq(layers))
                chans.append(ch)
            if level != levels - 1:
                blk = ResBlock(ch, ted, drop, ch, ss, g, down=True) if ud else Down(ch, c["conv_resample"])
                self.inputs.append(Seq([blk]))
                chans.append(ch)
                ds *= 2
        self.middle = Seq([ResBlock(ch, ted, drop, ch, ss, g), attn(ch, heads), ResBlock(ch, ted, drop, ch, ss, g)])
        self.outputs = nn.ModuleList()
        for level, mult in list(enumerate(c["channel_mult"]))[::-1]:
            for i in range(c["num_res_blocks"] + 1):
                ich = chans.pop()
                layers = [ResBlock(ch + ich, ted, drop, mc * mult, ss, g)]
                ch = mc * mult
                if ds in attn_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == c["num_res_blocks"]:
                    layers.append(ResBlock(ch, ted, drop, ch, ss, g, up=True) if ud else Up(ch, c["conv_resample"]))
                    ds //= 2
                self.outputs.append(Seq(layers))
        self.out_norm = nn.GroupNorm(g, ch)
        self.out_conv = zero(nn.Conv2d(ch, c["out_channels"], 3, padding=1))

    def forward(self, x, t, y=None):
        emb = self.time(timestep_embedding(t, self.mc))
        if self.label is not None and y is not None:
            emb = emb + self.label(y)
        hs, h = [], x
        for m in self.inputs:
            h = m(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for m in self.outputs:
            h = m(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out_conv(F.silu(self.out_norm(h)))


class Mlp(nn.Module):
    """Our 2-D MLP: the sinusoidal embedding of t through Linear + SiLU, added before every SiLU."""

    def __init__(self, data_dim=2, out_dim=2, hidden=128, layers=3, time_dim=64):
        super().__init__()
        self.time_dim = time_dim
        self.time_proj = nn.Linear(time_dim, hidden)
        self.input = nn.Linear(data_dim, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers - 1)])
        self.output = nn.Linear(hidden, out_dim)

    def forward(self, x, t, y=None):
        temb = F.silu(self.time_proj(timestep_embedding(t, self.time_dim)))
        h = F.silu(self.input(x) + temb)
        for layer in self.hidden:
            h = F.silu(layer(h) + temb)
        return self.output(h)


# --- The process (cosine, T = 1000) and the hybrid objective, in float64 tables like ours. ---
T = 1000


def cosine_tables():
    f = lambda s: math.cos((s / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    tb = {
        "betas": betas,
        "ab": ab,
        "sqrt_ab": ab.sqrt(),
        "sqrt_1mab": (1 - ab).sqrt(),
        "sqrt_recip_ab": (1 / ab).sqrt(),
        "sqrt_recipm1_ab": (1 / ab - 1).sqrt(),
        "post_logvar": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
        "coef1": betas * ab_prev.sqrt() / (1 - ab),
        "coef2": (1 - ab_prev) * (1 - betas).sqrt() / (1 - ab),
        "log_betas": betas.log(),
    }
    return {k: v.float() for k, v in tb.items()}


def ex(a, t, x):
    return a[t].reshape(-1, *([1] * (x.dim() - 1)))


def normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def approx_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def disc_loglik(x, means, log_scales):
    c = x - means
    inv = torch.exp(-log_scales)
    cdf_plus = approx_cdf(inv * (c + 1 / 255.0))
    cdf_min = approx_cdf(inv * (c - 1 / 255.0))
    lp = torch.log(cdf_plus.clamp(min=1e-12))
    lm = torch.log((1 - cdf_min).clamp(min=1e-12))
    ld = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, lp, torch.where(x > 0.999, lm, ld))


def mean_flat(x):
    return x.mean(dim=list(range(1, x.dim())))


def hybrid_loss(model, tb, x0, learned):
    b = x0.shape[0]
    t = torch.randint(0, T, (b,))
    noise = torch.randn_like(x0)
    x_t = ex(tb["sqrt_ab"], t, x0) * x0 + ex(tb["sqrt_1mab"], t, x0) * noise
    out = model(x_t, t.float())
    if not learned:
        return mean_flat((noise - out) ** 2).mean()
    c = x0.shape[1]
    eps, v = out[:, :c], out[:, c:]
    eps_d = eps.detach()
    frac = (v + 1) / 2
    logvar = frac * ex(tb["log_betas"], t, x0) + (1 - frac) * ex(tb["post_logvar"], t, x0)
    pred_x0 = ex(tb["sqrt_recip_ab"], t, x0) * x_t - ex(tb["sqrt_recipm1_ab"], t, x0) * eps_d
    mean = ex(tb["coef1"], t, x0) * pred_x0 + ex(tb["coef2"], t, x0) * x_t
    true_mean = ex(tb["coef1"], t, x0) * x0 + ex(tb["coef2"], t, x0) * x_t
    true_lv = ex(tb["post_logvar"], t, x0)
    kl = mean_flat(normal_kl(true_mean, true_lv, mean, logvar)) / math.log(2.0)
    nll = -mean_flat(disc_loglik(x0, mean, 0.5 * logvar)) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl) * (T / 1000.0)
    mse = mean_flat((noise - eps) ** 2)
    return (mse + vb).mean()


@torch.no_grad()
def ddim10(model, tb, shape, channels, clip):
    kept = list(range(0, T, T // 10))
    ab = tb["ab"][kept]
    x = torch.randn(shape)
    for i in reversed(range(len(kept))):
        t = torch.full((shape[0],), float(kept[i]))
        out = model(x, t)[:, :channels]
        a, a_prev = ab[i], (ab[i - 1] if i > 0 else torch.tensor(1.0))
        x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def timed(reps, f):
    f()
    v = []
    for _ in range(max(reps, 1)):
        s = time.perf_counter()
        f()
        v.append(time.perf_counter() - s)
    v.sort()
    n = len(v)
    med = v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
    return {"median": med, "min": v[0], "max": v[-1], "reps": n}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-mnist")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config")
    p.add_argument("--what", default="train,forward,ddim10")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tb = cosine_tables()
    if a.model == "mlp":
        model, shape, channels, learned, clip = Mlp(), (a.batch, 2), 2, False, False
    else:
        cfg = json.load(open(a.config))
        cfg = cfg.get("config", cfg)
        model = UNet(cfg)
        s, cin = cfg["image_size"], cfg["in_channels"]
        shape, channels, learned, clip = (a.batch, cin, s, s), cin, cfg["out_channels"] == 2 * cin, True
    params = sum(p.numel() for p in model.parameters())
    res = {"model": a.model, "batch": a.batch, "params": params, "torch": torch.__version__}
    x = torch.randn(shape)
    t = torch.rand(a.batch) * 999
    if "forward" in a.what:
        model.eval()
        with torch.no_grad():
            res["forward"] = timed(a.reps, lambda: model(x, t))
    if "ddim10" in a.what:
        model.eval()
        res["ddim10"] = timed(a.reps, lambda: ddim10(model, tb, shape, channels, clip))
    if "train" in a.what:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-8, weight_decay=0.0)
        x0 = torch.rand(shape) * 2 - 1

        def step():
            opt.zero_grad(set_to_none=True)
            loss = hybrid_loss(model, tb, x0, learned)
            loss.backward()
            opt.step()
            return loss.item()

        res["train"] = timed(a.reps, step)
    res["import_s"] = IMPORT_S
    res["import_rss_mb"] = IMPORT_RSS_MB
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res["threads"] = torch.get_num_threads()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
