"""Noise schedules: the pair (α_t, σ_t) of variance-preserving diffusion and of rectified flow, and the time grids.

Every sampler and training loss in tinyldm only needs x_t = α_t x0 + σ_t ε and the time the network was trained on.

Notation (../docs/samplers_guide.md has the long form):
    betas          β_t, t = 0 … T−1 (zero-based)           VP only
    alphas_cumprod ᾱ_t = ∏_{s≤t} (1 − β_s)                  VP only
    alpha          α_t = sqrt(ᾱ_t)            (flow: 1 − t)  signal scale
    sigma          σ_t = sqrt(1 − ᾱ_t)        (flow: t)      noise scale
    lam            λ_t = log(α_t / σ_t)                      half log-SNR
    sigma_tilde    σ̃_t = σ_t / α_t = e^{−λ_t}                Karras/EDM noise level

Time convention (one function, `Schedule.model_time`, maps it to the network's time for sampling and training):
    VP:   schedule time t is the discrete index 0 … T−1, fractional allowed; the network sees t itself.
          t = −1 is the clean data (ᾱ_{−1} = 1): DDPM's x_0, one step before our index 0. Between integers
          log-SNR is interpolated linearly; on the two intervals where it is infinite at one end ([−1, 0], and
          [T−2, T−1] with zero terminal SNR) α is interpolated linearly instead.
    flow: schedule time t ∈ [0, 1] is the paper's t (α = 1 − t, σ = t, t = 0 is the data); the network sees t·T
          with T = num_train_timesteps (1000, as SD3/Flux). The SD3 shift is applied to the time grids and to the
          training times, so a shifted t is still just α = 1 − t, σ = t.
All tables are float64.
"""

import math
from dataclasses import dataclass
from functools import cached_property

import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace", "karras")
DEFAULT_BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}  # DDPM; Stable Diffusion


def make_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """β_t for t = 0 … T−1 as float64, shape (T,)."""
    T = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if beta_schedule == "cosine":
        # Nichol & Dhariwal 2021, Eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2), s = 0.008,
        # and β_t = min(1 − ᾱ_t/ᾱ_{t−1}, 0.999); zero-based index i is their step i + 1.
        s = 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2  # (T+1,)
        return torch.clamp(1 - f[1:] / f[:-1], max=0.999)
    raise ValueError(f"beta_schedule {beta_schedule!r} is not supported; choose one of {BETA_SCHEDULES}")


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(ᾱ) so that ᾱ_{T−1} = 0 and ᾱ_0 is kept (Lin et al. 2023, Algorithm 1)."""
    a = alphas_cumprod.sqrt()
    a_first, a_last = a[0].clone(), a[-1].clone()
    a = (a - a_last) * a_first / (a_first - a_last)
    return a**2


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """σ̃_0 = σ_max > … > σ̃_{N−1} = σ_min, then σ̃_N = 0 (Karras et al. 2022, Eq. 5); shape (N+1,), float64."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho  # Eq. 5
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def integer_spacing(steps: int, T: int, spacing: str) -> torch.Tensor:
    """N decreasing training indices in 0 … T−1 (Lin et al. 2023, Table 2), float64, shape (N,)."""
    if spacing not in ("leading", "trailing", "linspace"):
        raise ValueError(f"spacing {spacing!r} is not supported; choose one of {SPACINGS}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1 … num_train_timesteps={T} for {spacing!r} spacing, got {steps}")
    if spacing == "leading":  # arange(N)·(T//N), reversed: 900, 800, …, 0
        return (torch.arange(steps, dtype=torch.float64) * (T // steps)).flip(0)
    if spacing == "linspace":  # round(linspace(0, T−1, N)), reversed: 999, 888, …, 0
        return torch.linspace(0, T - 1, steps, dtype=torch.float64).round().flip(0)
    return torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1  # trailing: 999, 899, …, 99


@dataclass(frozen=True, eq=False)
class Schedule:
    """α_t and σ_t of a VP diffusion (`Schedule.vp`) or a rectified flow (`Schedule.flow`). Build once, pass around."""

    kind: str  # "vp" or "flow"
    num_train_timesteps: int  # T: VP number of discrete steps; flow: the network sees t·T
    alphas_cumprod: torch.Tensor | None = None  # (T,) float64 ᾱ_t, VP only
    shift: float = 1.0  # flow timestep shift (Esser et al. 2024), 1.0 = none
    zero_terminal_snr: bool = False  # VP: ᾱ_{T−1} rescaled to 0 (Lin et al. 2023)
    beta_schedule: str = ""  # VP: name of the β schedule
    beta_start: float | None = None  # VP: β_0 and β_{T−1} as given (None for cosine)
    beta_end: float | None = None

    @classmethod
    def vp(cls, beta_schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float | None = None,
           beta_end: float | None = None, zero_terminal_snr: bool = False) -> "Schedule":
        """Variance-preserving schedule; β_start/β_end default to DDPM's (linear) or Stable Diffusion's (scaled)."""
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
        default_start, default_end = DEFAULT_BETAS.get(beta_schedule, (None, None))
        beta_start = default_start if beta_start is None else beta_start
        beta_end = default_end if beta_end is None else beta_end
        if beta_schedule != "cosine" and beta_schedule in BETA_SCHEDULES and not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start ≤ beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # ᾱ_t = ∏ (1 − β_s)
        if zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        if beta_schedule == "cosine":
            beta_start = beta_end = None
        return cls("vp", num_train_timesteps, alphas_cumprod, 1.0, zero_terminal_snr, beta_schedule, beta_start,
                   beta_end)

    @classmethod
    def flow(cls, shift: float = 1.0, num_train_timesteps: int = 1000) -> "Schedule":
        """Rectified flow x_t = (1 − t) x0 + t ε (Liu et al. 2022), with SD3's timestep shift (Esser et al. 2024)."""
        if shift <= 0:
            raise ValueError(f"shift must be positive (1.0 = no shift, SD3 uses 3.0), got {shift}")
        return cls("flow", num_train_timesteps, None, float(shift))

    def to_config(self) -> dict:
        """The few numbers that rebuild this schedule with `Schedule.from_config` (what config.json stores)."""
        if self.kind == "flow":
            return {"kind": "flow", "shift": self.shift, "num_train_timesteps": self.num_train_timesteps}
        return {"kind": "vp", "beta_schedule": self.beta_schedule, "num_train_timesteps": self.num_train_timesteps,
                "beta_start": self.beta_start, "beta_end": self.beta_end, "zero_terminal_snr": self.zero_terminal_snr}

    @classmethod
    def from_config(cls, config: dict) -> "Schedule":
        """The inverse of `to_config` (runs saved before β_start/β_end were stored get the schedule's defaults)."""
        if config.get("kind") == "flow":
            return cls.flow(shift=config["shift"], num_train_timesteps=config["num_train_timesteps"])
        if config.get("kind") == "vp":
            return cls.vp(config["beta_schedule"], num_train_timesteps=config["num_train_timesteps"],
                          beta_start=config.get("beta_start"), beta_end=config.get("beta_end"),
                          zero_terminal_snr=config["zero_terminal_snr"])
        raise ValueError(f"schedule config {config} has kind {config.get('kind')!r}; expected 'vp' or 'flow'")

    def __repr__(self) -> str:
        if self.kind == "flow":
            return f"Schedule.flow(shift={self.shift}, num_train_timesteps={self.num_train_timesteps})"
        return (f"Schedule.vp({self.beta_schedule!r}, num_train_timesteps={self.num_train_timesteps}, "
                f"zero_terminal_snr={self.zero_terminal_snr})")

    # Times.
    @property
    def t_max(self) -> float:
        """The noisiest time: T − 1 (VP) or 1 (flow)."""
        return float(self.num_train_timesteps - 1) if self.kind == "vp" else 1.0

    @property
    def t_min(self) -> float:
        """The clean-data time, σ = 0: −1 (VP, ᾱ_{−1} = 1) or 0 (flow). Samplers end here; the network never sees it."""
        return -1.0 if self.kind == "vp" else 0.0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time the network sees: t itself (VP index) or t·T (flow). Used by `sample` and `diffusion_loss` alike."""
        return t if self.kind == "vp" else t * self.num_train_timesteps

    def shift_time(self, t: torch.Tensor) -> torch.Tensor:
        """Flow: t' = shift·t / (1 + (shift − 1)·t) (Esser et al. 2024, SD3); identity for VP and shift = 1."""
        if self.kind == "vp" or self.shift == 1.0:
            return t
        return self.shift * t / (1 + (self.shift - 1) * t)

    def _as_time(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.numel():
            lo, hi = t.aminmax()  # one op for the range check
            if lo.item() < self.t_min - 1e-9 or hi.item() > self.t_max + 1e-9:
                raise ValueError(f"time {lo.item()} … {hi.item()} is outside this schedule's "
                                 f"[{self.t_min}, {self.t_max}] ({self.kind}; see `Schedule.t_min`, `t_max`)")
        return t.clamp(self.t_min, self.t_max)

    # α_t, σ_t and λ_t.
    @cached_property
    def _tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """α, σ and λ at the integer times −1, 0, …, T−1; shapes (T+1,). Built on first use and kept (the schedule
        is immutable), so a lookup costs a few small ops, not a rebuild of the whole table."""
        alpha_bar = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod])  # ᾱ_{−1} = 1
        lam = 0.5 * (alpha_bar.log() - (1 - alpha_bar).log())  # λ = ½ log(ᾱ/(1 − ᾱ)); ±inf at the ends
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), lam

    @cached_property
    def alpha_is_zero_at_t_max(self) -> bool:
        """Whether α = 0 at the noisiest time t_max (flow at t = 1, a VP schedule rescaled to zero terminal SNR), the
        only time where α can be 0: `sample` looks here before it evaluates α to refuse ε-prediction at α = 0."""
        return bool(self.alpha(self.t_max) == 0)

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, σ_t) as float64 tensors shaped like t."""
        t = self._as_time(t)
        if self.kind == "flow":
            return 1 - t, t.clone()
        a, s, lam = self._tables
        pos = t + 1  # position in the tables, 0 … T
        if torch.equal(pos, pos.round()):  # integer times (every leading or trailing grid): the tables themselves
            k = pos.long()
            return a[k], s[k]
        i = pos.floor().clamp(max=self.num_train_timesteps - 1).long()
        w = pos - i
        lam0, lam1 = lam[i], lam[i + 1]
        finite = lam0.isfinite() & lam1.isfinite()
        lam_t = torch.where(finite, lam0 + w * (lam1 - lam0), torch.zeros_like(w))  # linear in log-SNR
        alpha_lin = a[i] + w * (a[i + 1] - a[i])  # linear in α where λ is infinite at one end
        alpha = torch.where(finite, torch.sigmoid(2 * lam_t).sqrt(), alpha_lin)  # ᾱ = sigmoid(2λ)
        sigma = torch.where(finite, torch.sigmoid(-2 * lam_t).sqrt(), (1 - alpha_lin**2).clamp(min=0).sqrt())
        return alpha, sigma

    def alpha(self, t) -> torch.Tensor:
        """α_t (float64, shaped like t)."""
        return self.alpha_sigma(t)[0]

    def sigma(self, t) -> torch.Tensor:
        """σ_t (float64, shaped like t)."""
        return self.alpha_sigma(t)[1]

    def lam(self, t) -> torch.Tensor:
        """λ_t = log(α_t/σ_t): +inf at the data, −inf at zero SNR."""
        alpha, sigma = self.alpha_sigma(t)
        return alpha.log() - sigma.log()

    def t_from_lam(self, lam) -> torch.Tensor:
        """The time whose λ_t is `lam` (the exact inverse of `lam`, interpolation included)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        if self.kind == "flow":
            return torch.sigmoid(-lam)  # λ = log((1 − t)/t)
        a, _, table = self._tables
        # Interval i with table[i] ≥ λ ≥ table[i + 1]; the table decreases from +inf.
        i = (torch.searchsorted(-table, -lam, right=True) - 1).clamp(0, self.num_train_timesteps - 1)
        lam0, lam1 = table[i], table[i + 1]
        finite = lam0.isfinite() & lam1.isfinite()
        w_lam = (lam - lam0) / torch.where(finite, lam1 - lam0, torch.ones_like(lam0))
        w_alpha = (torch.sigmoid(2 * lam).sqrt() - a[i]) / (a[i + 1] - a[i])
        w = torch.where(finite, w_lam, w_alpha).clamp(0, 1)
        return i - 1 + w

    # Sampling grids.
    def timesteps(self, steps: int, spacing: str = "trailing") -> torch.Tensor:
        """N decreasing schedule times where the sampler calls the network; float64, shape (N,).

        VP: "leading", "trailing", "linspace" are the integer grids of Lin et al. 2023, Table 2; "karras" puts
        σ̃ on Karras et al.'s Eq. 5 grid between σ̃(0) and σ̃(T−1) (fractional times). Flow: the integer grid i maps
        to t = (i + 1)/T (trailing = 1, 1 − 1/N, …, 1/N, as SD3), then the shift. The sampler adds the final
        step to the data (t_min) itself.
        """
        if spacing not in SPACINGS:
            raise ValueError(f"spacing {spacing!r} is not supported; choose one of {SPACINGS}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        T = self.num_train_timesteps
        if spacing == "karras":
            if self.kind == "flow":
                raise ValueError("karras spacing is for VP schedules (σ̃ is infinite at flow t = 1); "
                                 "use spacing 'trailing' or 'linspace' with Schedule.flow(shift=...)")
            sigma_tilde = (-self.lam(torch.tensor([0.0, T - 1.0]))).exp()  # σ̃_min, σ̃_max
            if not sigma_tilde[1].isfinite():
                raise ValueError("karras spacing needs a finite σ_max, but this schedule has zero terminal SNR; "
                                 "use spacing 'trailing'")
            sigmas = karras_sigmas(steps, sigma_tilde[0].item(), sigma_tilde[1].item())[:-1]  # (N,)
            return self.t_from_lam(-sigmas.log())
        index = integer_spacing(steps, T, spacing)
        if self.kind == "vp":
            return index
        return self.shift_time((index + 1) / T)
