"""Frame autoencoder: uint8 frames (B, H, W, 3) ⇄ normalised latent grids (B, C, H/8, W/8).

A small convolutional VAE. The encoder folds 2×2 pixels into channels (pixel-unshuffle) and halves the grid
with strided convolutions; the decoder mirrors it with pixel-shuffle upsampling, so no convolution ever runs
at full resolution: the last one predicts each 2×2 pixel block from a half-resolution grid. That keeps the
decoder, which runs every displayed frame, cheap on a CPU. A small KL term keeps the latent space smooth;
latents leave `encode` shifted and scaled per channel to zero mean and unit variance (the statistics are
measured on training frames after training and saved with the weights as buffers).
"""
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))); the last conv starts at zero so each block starts as identity."""

    def __init__(self, channels: int, norm: bool):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] → posterior mean and log-variance, each (B, C, H/f, W/f), f = 2^len(channels)."""

    def __init__(self, config: "AutoencoderConfig"):
        super().__init__()
        ch = config.enc_channels
        self.stem = nn.Conv2d(3 * 4, ch[0], 3, padding=1)  # after pixel-unshuffle: 2×2 pixels × RGB
        levels = []
        for i, c in enumerate(ch):
            down = nn.Identity() if i == 0 else nn.Conv2d(ch[i - 1], c, 3, stride=2, padding=1)
            levels.append(nn.Sequential(down, *[ResBlock(c, norm=True) for _ in range(config.enc_blocks)]))
        self.levels = nn.Sequential(*levels)
        self.norm_out = nn.GroupNorm(8, ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.stem(F.pixel_unshuffle(x, 2))                    # (B, ch0, H/2, W/2)
        h = self.levels(h)                                         # (B, ch-1, H/f, W/f)
        mean, logvar = self.conv_out(F.silu(self.norm_out(h))).chunk(2, dim=1)  # 2 × (B, C, h, w)
        return mean, logvar.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    """(B, C, h, w) raw latents → (B, 3, h·f, w·f) in about [-1, 1]. No normalisation layers: they cost time."""

    def __init__(self, config: "AutoencoderConfig"):
        super().__init__()
        ch = config.dec_channels
        self.conv_in = nn.Conv2d(config.latent_channels, ch[0], 3, padding=1)
        levels = []
        for i, c in enumerate(ch):
            # pixel-shuffle first, then convolve: the 3×3 conv reads a quarter of the channels at 4× the pixels
            up = nn.Identity() if i == 0 else nn.Sequential(nn.PixelShuffle(2), nn.Conv2d(ch[i - 1] // 4, c, 3, padding=1))
            levels.append(nn.Sequential(up, *[ResBlock(c, norm=False) for _ in range(config.dec_blocks)]))
        self.levels = nn.Sequential(*levels)
        self.conv_out = nn.Conv2d(ch[-1], 3 * 4, 3, padding=1)  # each half-resolution cell → 2×2 RGB pixels

    def forward(self, z):
        h = self.levels(self.conv_in(z))                   # (B, ch-1, H/2, W/2)
        return F.pixel_shuffle(self.conv_out(F.silu(h)), 2)  # (B, 3, H, W)


@dataclass
class AutoencoderConfig:
    height: int = 128
    width: int = 128
    latent_channels: int = 16          # C: the dynamics model patchifies 2×2 latents → 4·C values per token
    enc_channels: tuple = (32, 64, 128)  # per level; the grid halves at each level after the first
    enc_blocks: int = 1                # residual blocks per encoder level
    dec_channels: tuple = (128, 64, 32)  # per level; each entry divisible by 4 (pixel-shuffle)
    dec_blocks: int = 2                # the cpu size: two blocks decode a 128×128 frame in ~6 ms on 2 idle cores;
                                       # the shipped decoder has one (mode=tune_decoder tune_decoder.dec_blocks=1)
    kl_weight: float = 1e-5            # on the per-element KL; small: only keeps latents bounded and smooth
    l2_weight: float = 1.0             # loss = L1 + l2_weight·MSE + grad_weight·L1(image gradients) + kl
    grad_weight: float = 0.5           # cheap sharpness term: block texture edges matter more than flat sky
    train_crop: int = 0                # train on random crops of this size (multiple of the downsampling); 0: whole

    def __post_init__(self):
        self.enc_channels, self.dec_channels = tuple(self.enc_channels), tuple(self.dec_channels)
        if len(self.enc_channels) != len(self.dec_channels):
            raise ValueError(f"enc_channels {self.enc_channels} and dec_channels {self.dec_channels} "
                             f"must have the same number of levels")
        f = self.downsample
        if self.height % f or self.width % f:
            raise ValueError(f"height {self.height} and width {self.width} must be multiples of {f}")
        if any(c % 8 for c in self.enc_channels + self.dec_channels):
            raise ValueError(f"channel counts must be multiples of 8 (GroupNorm, pixel-shuffle), "
                             f"got {self.enc_channels} / {self.dec_channels}")
        if self.train_crop and (self.train_crop % f or self.train_crop > min(self.height, self.width)):
            raise ValueError(f"train_crop {self.train_crop} must be a multiple of {f} and fit the frame")

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** len(self.enc_channels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one frame's latent grid."""
        return self.latent_channels, self.height // self.downsample, self.width // self.downsample


class Autoencoder(nn.Module):
    """Frames ⇄ latents. `encode` takes uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1]."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # per-channel statistics of the raw posterior means over training frames; set by fit_latent_stats
        self.register_buffer("latent_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latent_std", torch.ones(config.latent_channels))

    def encode_raw(self, x: torch.Tensor, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float frames (B, 3, H, W) → (z, mean, logvar), each (B, C, h, w), not normalised."""
        mean, logvar = self.encoder(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if sample else mean
        return z, mean, logvar

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames → normalised latents (B, C, h, w): zero mean and unit variance per channel on training data."""
        _, mean, _ = self.encode_raw(frames_to_float(frames.to(self.latent_std.device), self.config))
        return (mean - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) → float frames (B, 3, H, W) in [-1, 1]."""
        self.check_latents(latents)
        return self.decode_unclamped(latents).clamp(-1.0, 1.0)

    def decode_unclamped(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → float frames, not clamped: the decoder's training path (mode=tune_decoder)."""
        return self.decoder(self.unnormalise(latents))

    def unnormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → the raw latents the decoder reads."""
        return latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def forward(self, x: torch.Tensor, sample: bool = True):
        """Float frames (B, 3, H, W) → (reconstruction (B, 3, H, W) unclamped, mean, logvar): the training path."""
        z, mean, logvar = self.encode_raw(x, sample=sample)
        return self.decoder(z), mean, logvar

    @torch.no_grad()
    def fit_latent_stats(self, raw_means: torch.Tensor) -> None:
        """Set the normalisation from raw posterior means (N, C, h, w) of training frames."""
        self.latent_mean.copy_(raw_means.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(raw_means.std(dim=(0, 2, 3)).clamp_min(1e-6))

    def check_latents(self, latents: torch.Tensor) -> None:
        """Raise ValueError naming the shape unless `latents` is (B, latent_channels, h, w)."""
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents (B, {self.config.latent_channels}, h, w), got {tuple(latents.shape)}")


class ChannelsLastDecode:
    """`autoencoder.decode` on the CPU with a copy of the decoder in channels-last memory, which oneDNN's
    convolutions prefer (measured on the 2-core machine, one 128×128 frame: 20 → 16 ms with one thread, 12 → 10
    with two). The same frames to float rounding (about 4e-6); the autoencoder itself is left as it was.

    dtype=torch.bfloat16 runs that copy in bf16 (the latents are unnormalised in fp32 first): on a CPU with bf16
    instructions (`native_bf16`) about twice as fast (2-core AVX512-BF16 machine, one frame: 8.6 → 4.2 ms), and
    the frames within a few levels of 255 of fp32's."""

    def __init__(self, autoencoder: Autoencoder, dtype: torch.dtype = torch.float32):
        self.autoencoder, self.dtype = autoencoder.eval(), dtype
        self.decoder = copy.deepcopy(autoencoder.decoder).to(dtype=dtype, memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return self.forward(latents)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """The decode without entering inference_mode: what torch.compile traces (`compiled_decode`)."""
        self.autoencoder.check_latents(latents)
        raw = self.autoencoder.unnormalise(latents).to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.decoder(raw).float().clamp(-1.0, 1.0)


def compiled_decode(decode):
    """`autoencoder.decode` or a `ChannelsLastDecode` under torch.compile (fullgraph, fixed shapes): the norms and
    activations fused with what is around them (one 128×128 frame on the 2-core AVX2 CPU, fp32: 7.8 → 6.2 ms).
    Call it under inference_mode or no_grad; each new batch size compiles again."""
    return torch.compile(getattr(decode, "forward", decode), fullgraph=True, dynamic=False)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): where it does not, oneDNN emulates bf16
    and a bf16 decoder is slower than fp32."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


class GraphedDecode:
    """`autoencoder.decode` of a fixed batch of latents on CUDA, replayed as one CUDA graph (a decode at batch 1
    is hundreds of small kernels: launch-bound without a graph). Captured on the first call; the result is a
    buffer the next call overwrites (clone it to keep it). decode: what is replayed instead of
    `autoencoder.decode` (a bf16 `ChannelsLastDecode`)."""

    def __init__(self, autoencoder: Autoencoder, decode=None):
        self.autoencoder, self.graph, self.inputs, self.outputs = autoencoder.eval(), None, None, None
        self.decode = decode or self.autoencoder.decode

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.device.type != "cuda":
            raise ValueError(f"GraphedDecode replays CUDA graphs: latents are on {latents.device}")
        if self.graph is None or latents.shape != self.inputs.shape or latents.dtype != self.inputs.dtype:
            self._capture(latents)
        self.inputs.copy_(latents)
        self.graph.replay()
        return self.outputs

    def _capture(self, latents: torch.Tensor) -> None:
        self.inputs = latents.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: cuDNN picks its algorithms outside the capture
            for _ in range(3):
                self.decode(self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.decode(self.inputs)


def frames_to_float(frames: torch.Tensor, config: AutoencoderConfig) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [-1, 1]; float (B, 3, H, W) passes through, checked."""
    c = config
    if frames.dtype == torch.uint8:
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (c.height, c.width, 3):
            raise ValueError(f"expected uint8 frames (B, {c.height}, {c.width}, 3), got {tuple(frames.shape)}")
        return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (B, 3, H, W)
    if not frames.is_floating_point():
        raise ValueError(f"expected uint8 (B, H, W, 3) or float (B, 3, H, W) frames, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[2] % c.downsample or frames.shape[3] % c.downsample:
        raise ValueError(f"expected float frames (B, 3, {c.height}, {c.width}) in [-1, 1] (or crops whose sides "
                         f"are multiples of {c.downsample}), got {tuple(frames.shape)}")
    return frames


def vae_loss(recon, x, mean, logvar, config: AutoencoderConfig) -> tuple[torch.Tensor, dict]:
    """L1 + l2_weight·MSE + grad_weight·gradient L1 + kl_weight·KL (per-element means), and the parts for logging."""
    loss, parts = reconstruction_loss(recon, x, config)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return loss + config.kl_weight * kl, {**parts, "kl": kl.detach()}


def reconstruction_loss(recon, x, config: AutoencoderConfig) -> tuple[torch.Tensor, dict]:
    """L1 + l2_weight·MSE + grad_weight·gradient L1 (per-element means): vae_loss without the KL term."""
    l1 = (recon - x).abs().mean()
    mse = (recon - x).pow(2).mean()
    grad = gradient_l1(recon, x)
    loss = l1 + config.l2_weight * mse + config.grad_weight * grad
    parts = {"l1": l1.detach(), "mse": mse.detach(), "grad": grad.detach(),
             "psnr": psnr(recon.detach().clamp(-1, 1), x).mean()}
    return loss, parts


def gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean L1 difference of horizontal and vertical finite differences of two (B, 3, H, W) images."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    return 0.5 * ((dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean())


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Float (B, 3, H, W) in [-1, 1] → uint8 (B, H, W, 3)."""
    return ((frames.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of float (B, 3, H, W) images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10.0 * torch.log10(4.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03) of (B, 3, H, W) in [-1, 1]."""
    a, b = (a.float() + 1.0) / 2.0, (b.float() + 1.0) / 2.0  # to [0, 1], data range 1
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    g = torch.exp(-((torch.arange(window, dtype=torch.float32) - window // 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).to(a.device)
    channels = a.shape[1]
    kx, ky = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    blur = lambda t: F.conv2d(F.conv2d(t, kx, groups=channels), ky, groups=channels)  # valid: no padding
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops_per_decode(config: AutoencoderConfig) -> float:
    """Multiply-adds ×2 of one frame's decode, counting convolutions only (for the benchmark table)."""
    model, total = Decoder(config), 0.0
    hooks = []

    def count(module, inputs, output):
        nonlocal total
        total += 2.0 * output.numel() * module.in_channels * math.prod(module.kernel_size) / module.groups

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        model(torch.zeros(1, *config.latent_shape))
    for h in hooks:
        h.remove()
    return total
