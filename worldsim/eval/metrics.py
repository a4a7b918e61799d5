"""Frame metrics for evaluation: PSNR and SSIM against the truth, and per-frame statistics for drift checks.

Frames are uint8 (N, H, W, 3) numpy arrays, as the engine and every predictor return them. PSNR and SSIM are
the autoencoder's own (worldsim.models.autoencoder), so a model's training curves and its evaluation report
the same numbers; identical frames score PSNR_CAP_DB, a finite number that JSON can hold.
"""
import numpy as np
import torch
import torch.nn.functional as F

from worldsim.models.autoencoder import psnr as psnr_float
from worldsim.models.autoencoder import ssim as ssim_float

PSNR_CAP_DB = 100.0  # identical frames; any real difference of one 8-bit level on a 256×256 frame is still below
# A pixel counts as sky when it is bright and clearly blue: the engine's day sky runs from (92, 143, 250) at the
# zenith to (179, 209, 255) at the horizon; water and blue blocks are darker or less saturated.
SKY_MIN_BLUE, SKY_BLUE_OVER_RED, SKY_BLUE_OVER_GREEN = 200, 40, 25
STAT_NAMES = ("mean_r", "mean_g", "mean_b", "sharpness", "contrast", "sky_fraction", "motion")
# Collapse (the two failures a long rollout must not show). A frame is still when its mean absolute change from
# the frame before is under STILL_MOTION grey levels; frozen: a still stretch over twice the real run's longest and
# over FROZEN_MIN_SECONDS (or a quarter of a shorter run). Faded: the contrast (luma standard deviation), averaged
# over a second, falls under FADE_FRACTION of the real run's lowest one-second average (a dip into one colour),
# or, averaged over WASHED_SECONDS, under FADE_FRACTION of the real run's over the same seconds (washed out: a flat
# haze that never dips but never holds a scene either).
STILL_MOTION, FROZEN_MIN_SECONDS, FADE_FRACTION, WASHED_SECONDS = 0.5, 5.0, 0.5, 10.0
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def to_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [-1, 1]."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.shape != b.shape:
        raise ValueError(f"frames to compare differ in shape: {a.shape} vs {b.shape}")
    return to_float(a), to_float(b)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames (N, H, W, 3) or one (H, W, 3); capped at PSNR_CAP_DB."""
    with torch.no_grad():
        values = psnr_float(*_pair(a, b)).double().numpy()
    return np.minimum(values, PSNR_CAP_DB)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame SSIM (Gaussian window 11, σ 1.5) of uint8 frames (N, H, W, 3) or one (H, W, 3)."""
    with torch.no_grad():
        return ssim_float(*_pair(a, b)).double().numpy()


def frame_stats(frames: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """(N, 7) float64 per frame, in STAT_NAMES order: mean R, G, B (0..255), sharpness (variance of the Laplacian
    of luma), contrast (standard deviation of luma), sky fraction, and motion (mean absolute difference from the
    frame before; `previous` precedes the first, which scores 0 without it). A frozen world has no motion; flicker
    has too much; a world fading to one colour loses its contrast."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    x = torch.from_numpy(np.ascontiguousarray(frames)).double()  # (N, H, W, 3)
    before = torch.cat([x[:1] if previous is None else torch.from_numpy(np.asarray(previous)).double()[None], x[:-1]])
    motion = (x - before).abs().mean(dim=(1, 2, 3))
    mean = x.mean(dim=(1, 2))                                    # (N, 3)
    luma = (x @ _LUMA.double())[:, None]                         # (N, 1, H, W)
    sharpness = F.conv2d(luma, _LAPLACIAN.double()).var(dim=(1, 2, 3))
    contrast = luma.std(dim=(1, 2, 3))
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    sky = ((b >= SKY_MIN_BLUE) & (b - r >= SKY_BLUE_OVER_RED) & (b - g >= SKY_BLUE_OVER_GREEN)).double()
    return torch.cat([mean, sharpness[:, None], contrast[:, None], sky.mean(dim=(1, 2))[:, None], motion[:, None]],
                     dim=1).numpy()


def run_lengths(flags: np.ndarray) -> np.ndarray:
    """At each element, the length of the stretch of consecutive True values that ends there (0 where False)."""
    flags = np.asarray(flags, dtype=bool)
    index = np.arange(len(flags))
    last_false = np.maximum.accumulate(np.where(flags, -1, index)) if len(flags) else index
    return np.where(flags, index - last_false, 0)


def longest_run(flags: np.ndarray) -> int:
    """Length of the longest stretch of consecutive True values."""
    lengths = run_lengths(flags)
    return int(lengths.max()) if len(lengths) else 0


def first_run_over(flags: np.ndarray, length: float) -> int | None:
    """Index of the first element at which a stretch of consecutive True values grows longer than `length`."""
    over = np.flatnonzero(run_lengths(flags) > length)
    return int(over[0]) if len(over) else None


def collapse(real: np.ndarray, candidate: np.ndarray, fps: float) -> dict:
    """Whether a long rollout froze or faded to one colour (dipped into it, or washed out into a flat haze for
    WASHED_SECONDS), judged against the real run under the same actions, and when: the frame at which it first
    did (the last of the still stretch that outgrew the limit, or of the first second or WASHED_SECONDS whose
    contrast fell under its limit), and the seconds of play before that (the whole run where it held), which ranks
    candidates that all collapse; and the run's mean contrast against the real run's.

    real, candidate: frame_stats rows (N, len(STAT_NAMES)). See STILL_MOTION, FROZEN_MIN_SECONDS, FADE_FRACTION,
    WASHED_SECONDS."""
    motion, contrast = STAT_NAMES.index("motion"), STAT_NAMES.index("contrast")
    still_real = longest_run(real[1:, motion] < STILL_MOTION)  # row 0 has no frame before it in the run
    still_candidate = longest_run(candidate[1:, motion] < STILL_MOTION)
    frozen_limit = max(2 * still_real, min(FROZEN_MIN_SECONDS * fps, len(candidate) / 4))
    window = max(1, min(int(round(fps)), len(real), len(candidate)))
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")
    smooth_candidate = smooth(candidate[:, contrast])
    contrast_real, contrast_candidate = smooth(real[:, contrast]).min(), smooth_candidate.min()
    long = max(1, min(int(round(WASHED_SECONDS * fps)), len(real), len(candidate)))
    n = min(len(real), len(candidate))  # the same seconds of both runs
    average = lambda v: np.convolve(v[:n], np.ones(long) / long, mode="valid")
    ratio = average(candidate[:, contrast]) / np.maximum(average(real[:, contrast]), 1e-9)
    washed = bool(ratio.min() < FADE_FRACTION)
    frozen = still_candidate > frozen_limit
    faded = contrast_candidate < FADE_FRACTION * contrast_real or washed
    frozen_at = first_run_over(candidate[1:, motion] < STILL_MOTION, frozen_limit)
    faded_at = np.flatnonzero(smooth_candidate < FADE_FRACTION * contrast_real)
    washed_at = np.flatnonzero(ratio < FADE_FRACTION)
    at = [frame for frame in (None if frozen_at is None else frozen_at + 1,
                              int(faded_at[0]) + window - 1 if len(faded_at) else None,
                              int(washed_at[0]) + long - 1 if len(washed_at) else None) if frame is not None]
    first = min(at) if at else None
    return {"collapsed": bool(frozen or faded), "frozen": bool(frozen), "faded": bool(faded), "washed_out": washed,
            "first_frame": first, "seconds_before": float((len(candidate) if first is None else first) / fps),
            # how faded the whole run is, a smoother ranking than the verdict: 1 keeps the real run's contrast
            "mean_contrast": {"real": float(real[:, contrast].mean()), "candidate": float(candidate[:, contrast].mean()),
                              "ratio": float(candidate[:, contrast].mean() / max(real[:, contrast].mean(), 1e-9))},
            "longest_still_frames": {"real": still_real, "candidate": still_candidate, "limit": float(frozen_limit)},
            "lowest_contrast_1s": {"real": float(contrast_real), "candidate": float(contrast_candidate),
                                   "limit": float(FADE_FRACTION * contrast_real)},
            # the candidate's contrast over WASHED_SECONDS against the real run's over the same seconds
            "lowest_contrast_ratio_10s": {"candidate": float(ratio.min()), "limit": FADE_FRACTION,
                                          "seconds": long / fps}}


class StatsStream:
    """frame_stats of a long sequence fed one frame at a time, computed in batches (per-frame calls are slow)."""

    def __init__(self, first: np.ndarray, batch: int = 64):
        self.previous, self.batch, self.buffer, self.rows = first, batch, [], []

    def add(self, frame: np.ndarray) -> None:
        self.buffer.append(frame)
        if len(self.buffer) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            self.rows.append(frame_stats(np.stack(self.buffer), previous=self.previous))
            self.previous, self.buffer = self.buffer[-1], []

    def result(self) -> np.ndarray:
        """(N, len(STAT_NAMES)) for every frame added."""
        self._flush()
        return np.concatenate(self.rows) if self.rows else np.zeros((0, len(STAT_NAMES)))


def spread(values) -> dict:
    """Mean, standard deviation, min and max of a list of numbers (all None when it is empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


def paired_difference(a, b, groups) -> dict:
    """Mean of a - b over paired values, and its standard error over `groups` (the values of one group are
    averaged first: they are not independent). Verdict: "ahead" or "behind" where the mean is more than two
    standard errors from zero, "level" where it is not, None with a single group."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    groups = np.asarray(groups)
    if a.shape != b.shape or a.shape != groups.shape or a.size == 0:
        raise ValueError(f"paired values need equal, non-empty lengths, got {a.size}, {b.size} and "
                         f"{groups.size} groups")
    diff = a - b
    means = np.array([diff[groups == g].mean() for g in np.unique(groups)])
    mean = float(diff.mean())
    se = float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1 else None
    verdict = None if se is None else ("ahead" if mean > 2 * se else "behind" if mean < -2 * se else "level")
    return {"mean": mean, "standard_error": se, "groups": int(len(means)), "verdict": verdict}
