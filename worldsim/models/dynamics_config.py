"""The dynamics model's config: sizes, attention window, training objective and sampling defaults
(configs/dynamics/*.yaml hold exactly its fields, and each checkpoint its values), checked when it is made, and
the noise levels the sampler's Euler steps go through for it. The model itself is worldsim/models/dynamics.py."""
import math
from dataclasses import dataclass, replace

import kernels


@dataclass
class DynamicsConfig:
    """Sizes, window, objective and sampling defaults; configs/dynamics/*.yaml hold exactly these fields."""

    LATER_FIELDS = ("self_context", "self_context_level", "rollout_context", "rollout_frames", "camera_warp",
                    "warp_keep_rows", "view_memory", "view_memory_frames", "context_wear", "wear_strength",
                    "wear_shift", "adversarial", "adversarial_frames", "critic_lr",
                    "critic_width", "adversarial_pair", "critic_pool",
                    "adversarial_adaptive", "sampler_levels", "sample_start", "start_bridge",
                    "latent_guard", "guard_range", "spread_guard", "spread_floor", "idle_start",
                    "idle_turn", "keep_view", "commit_last_step")  # checkpoints saved before them load
                                                                                  # with the defaults
    latent_channels: int = 16   # C of the autoencoder's latents (B, C, h, w)
    latent_height: int = 16
    latent_width: int = 16
    patch_size: int = 2         # patches of the latent grid -> (16 / 2)^2 = 64 tokens per frame
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128           # head dim n_embd / n_head must be one the kernels take: 32, 64, 128
    mlp_ratio: float = 4.0
    chunk_frames: int = 1       # K: frames denoised together, full attention inside a chunk
    prev_input: bool = True     # each frame's tokens also embed the previous frame's input latents (at its
                                # noise level, which the conditioning gets too): copying is one linear map
    residual: bool = False      # predict a correction to the best linear guess from the previous frame and
                                # the noisy input (needs prev_input): the untrained model copies the last frame
    change_var: float = 0.3     # residual: mean square change of a latent between frames (0.33 on engine data)
    camera_warp: float = 0.0    # > 0: the frames' vertical field of view in degrees, and each frame's previous
                                # frame is first turned by the camera move of the frame's action (the rotation's
                                # homography, `warp_previous`) so that prev_input and residual start from the
                                # view the player turned to; 0: off
    warp_keep_rows: int = 0     # latent rows at the bottom left unturned: the HUD's hotbar stays where it is
    context_frames: int = 16    # W: frames a token sees, its own chunk included; a multiple of K, > K
    # objective (training)
    noise_schedule: str = "logit_normal"  # logit_normal | uniform: per-frame noise level t
    sampler_levels: float = 0.0  # chance a frame's level is instead one the sampler starts an Euler step from
                                # (step_levels(config) but 0: 1 and 0.5 for 2 steps), the
                                # levels the model is asked about when it plays; context frames keep theirs
    start_bridge: float = 0.0   # with sample_start < 1: chance a target frame at a level t <= sample_start trains
                                # on the sampler's own path, x_t = (1 - t/s) x + (t/s) x_s with x_s the frame
                                # before it, turned and noised to s = sample_start (`start_point`), and velocity
                                # (x_s - x) / s, instead of on the path from noise through the frame itself
    context_prob: float = 0.5   # chance a clip gets nearly clean context instead of independent levels
    context_noise_max: float = 0.1  # context frames' levels are drawn from U[0, context_noise_max]
    target_prob: float = 0.0    # in a context clip: 0 -> a clean prefix, then independent levels; > 0 -> each
                                # chunk is a noisy target with this chance, the rest context (many targets
                                # per clip see the clean past that sampling gives them)
    context_loss: float = 1.0   # weight of the loss on context frames (levels from the context range); the
                                # sampler never reads their outputs: 0 spends the whole loss on targets
    self_context: float = 0.0   # chance a context clip's context frames are the model's own estimates of them
                                # (no gradient), the kind of frames it continues from when it plays, so that it
                                # learns not to compound its own blur; their loss weight is 0
    self_context_level: float = 0.5  # the level those estimates are made from (one Euler step to 0; with 2
                                # sampling steps the last one starts at 0.5)
    rollout_context: float = 0.0  # chance a context clip's last `rollout_frames` context frames are the model's
                                # own samples, made one after another by the sampler (sample_steps Euler steps
                                # from noise) from the frames before them (no gradient; loss weight 0): the
                                # frames after them learn to continue from, and correct, its own drift
    rollout_frames: int = 2     # frames of such a rollout
    context_wear: float = 0.0   # chance a context clip's context frames are worn the way the model's own long
                                # rollouts wear its frames (`worn`: flatter, blurred, the colours shifted; no
                                # loss on them): the frames after them learn to continue sharp from a worn past
    wear_strength: float = 0.5  # how far the wear goes at most (0: none; 1: the contrast down to nothing)
    wear_shift: float = 0.25    # the wear's shift of each channel's mean: its standard deviation, in units of the
                                # channel's spatial spread (0: the colours stay)
    adversarial: float = 0.0    # > 0: post-training on the model's own rollouts (worldsim/models/adversarial.py):
                                # the weight, beside flow matching's 1, of a critic's verdict on a frame the model
                                # made after `adversarial_frames - 1` of its own, through the sampler's Euler steps
    adversarial_frames: int = 24  # frames the model makes after a prompt of context_frames / 2 real ones; the
                                # last is judged (the clips are that much longer than the window)
    adversarial_pair: float = 0.0  # > 0: the weight of a second critic's verdict on the first frame made from
                                # the real prompt, judged beside the real frame before it and the action between
    adversarial_adaptive: bool = False  # scale each verdict each step by the ratio of flow matching's gradient
                                # norm to its own at the output layer: the weights are then shares of the gradient
    critic_lr: float = 2e-4     # the critics' Adam learning rate (constant)
    critic_width: int = 64      # channels of the critic's first convolution
    critic_pool: int = 1        # the critics see frames average-pooled by this factor (2: an 8 x 8 grid at tiny):
                                # coarse layout, colour and contrast, not the fine texture it could ask to invent
    # sampling
    context_noise: float = 0.05     # level at which finished frames are written into the cache
    sample_steps: int = 4           # Euler steps per chunk (the sampler may change it between chunks)
    sample_shift: float = 1.0       # the steps' levels t -> s t / (1 + (s - 1) t): s > 1 spends them at high noise
    sample_start: float = 1.0       # the level each frame's Euler steps start from: 1 from noise; below 1 from the
                                    # previous frame (turned by camera_warp) noised to it, the levels scaled by it
    idle_start: float = 0.0         # > 0: the start instead for a frame whose action holds no button and turns the
                                    # camera by at most idle_turn degrees each way (the view should stay: a low start
                                    # keeps its detail where sample_start redraws it); 0: sample_start for every frame
    idle_turn: float = 1.0          # the most camera move, in degrees per tick, an idle action may hold
    view_memory: bool = False       # the sampler keeps a panorama of the frames it made (worldsim/view_memory.py):
                                    # what a turn reveals comes from it where it was seen (needs camera_warp)
    view_memory_frames: int = 100   # what the panorama saw longer ago than this many frames is not used
    keep_view: bool = False         # a frame whose action holds no button and stands or turns faster than idle_turn
                                    # (`keeps_view`) keeps what is known of its view (`known_view`: the panorama's
                                    # where it saw it, else the last frame turned) at every Euler step; the model
                                    # makes only what the turn reveals
    commit_last_step: bool = False  # a frame's keys and values enter the caches from its last Euler step's pass (at
                                    # that step's level, when it is within context_noise_max, the context levels
                                    # training saw) instead of from a commit pass of the finished frame: S passes
                                    # a frame instead of S + 1
    latent_guard: float = 0.0       # > 0: training records guard_range from its data's frames at these percentiles
                                    # (latent_guard and 100 - latent_guard) of each channel's spatial mean
    guard_range: tuple | None = None  # (low_0 .. low_C-1, high_0 .. high_C-1): the sampler moves each made frame's
                                    # channel means back into it (long rollouts drift out of the latents' range,
                                    # where the decoder paints one texture everywhere); None: no guard
    spread_guard: float = 0.0       # > 0: training records spread_floor, the spread_guard percentile of each
                                    # channel's spatial std over its data's frames
    spread_floor: tuple | None = None  # (C floats): the sampler scales each made frame's detail about its channel
                                    # means up until each channel's spatial std reaches it, by at most dynamics.SPREAD_GAIN
                                    # (long rollouts fade to flat frames the data never shows); None: no floor

    @property
    def grid(self) -> tuple[int, int]:
        return self.latent_height // self.patch_size, self.latent_width // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch_size ** 2

    @property
    def view_memory_size(self) -> tuple[int, int]:
        """(pitch, yaw) cells of the view memory's panorama: 1.5 cells per latent pixel's angle at the view's
        centre, the yaw cells a multiple of 8."""
        fov = self.camera_warp or 70.0
        yaw_cells = 8 * math.ceil(1.5 * 360.0 * self.latent_height / fov / 8)
        return yaw_cells // 2, yaw_cells

    @property
    def cache_frames(self) -> int:
        """Frames the KV cache holds: the window minus the chunk being denoised."""
        return self.context_frames - self.chunk_frames

    def __post_init__(self):
        def need(ok, msg):
            if not ok:
                raise ValueError(f"DynamicsConfig: {msg}")
        need(self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        need(self.n_embd // self.n_head in kernels.HEAD_DIMS,
             f"head dim n_embd/n_head={self.n_embd // self.n_head} must be one of {kernels.HEAD_DIMS}")
        need(self.latent_height % self.patch_size == 0 and self.latent_width % self.patch_size == 0,
             f"latent {self.latent_height}x{self.latent_width} must be a multiple of patch_size={self.patch_size}")
        need(self.chunk_frames >= 1, f"chunk_frames must be >= 1, got {self.chunk_frames}")
        need(self.context_frames > self.chunk_frames and self.context_frames % self.chunk_frames == 0,
             f"context_frames={self.context_frames} must be a multiple of chunk_frames={self.chunk_frames} "
             "and larger than it")
        need(self.noise_schedule in ("logit_normal", "uniform"),
             f"noise_schedule must be logit_normal or uniform, got {self.noise_schedule!r}")
        need(0.0 <= self.sampler_levels <= 1.0, f"sampler_levels must lie in [0, 1], got {self.sampler_levels}")
        need(0.0 <= self.context_prob <= 1.0, f"context_prob must lie in [0, 1], got {self.context_prob}")
        need(0.0 <= self.target_prob <= 1.0, f"target_prob must lie in [0, 1], got {self.target_prob}")
        need(self.context_loss >= 0.0, f"context_loss must be >= 0, got {self.context_loss}")
        need(0.0 <= self.self_context <= 1.0, f"self_context must lie in [0, 1], got {self.self_context}")
        need(0.0 < self.self_context_level < 1.0,
             f"self_context_level must lie in (0, 1), got {self.self_context_level}")
        need(0.0 <= self.rollout_context <= 1.0, f"rollout_context must lie in [0, 1], got {self.rollout_context}")
        need(1 <= self.rollout_frames < self.context_frames,
             f"rollout_frames must lie in [1, context_frames={self.context_frames}), got {self.rollout_frames}")
        need(self.self_context == 0.0 or self.rollout_context == 0.0,
             "self_context and rollout_context both replace context frames: set one of them to 0")
        need(0.0 <= self.context_wear <= 1.0, f"context_wear must lie in [0, 1], got {self.context_wear}")
        need(0.0 <= self.wear_strength <= 1.0, f"wear_strength must lie in [0, 1], got {self.wear_strength}")
        need(self.wear_shift >= 0.0, f"wear_shift must be >= 0, got {self.wear_shift}")
        need(self.adversarial >= 0.0, f"adversarial must be >= 0 (0: off), got {self.adversarial}")
        need(self.adversarial_pair >= 0.0, f"adversarial_pair must be >= 0 (0: off), got {self.adversarial_pair}")
        need(self.adversarial_frames >= 1, f"adversarial_frames must be >= 1, got {self.adversarial_frames}")
        need(self.critic_lr > 0.0, f"critic_lr must be > 0, got {self.critic_lr}")
        need(self.critic_width >= 1, f"critic_width must be >= 1, got {self.critic_width}")
        need(self.critic_pool >= 1 and self.latent_height % self.critic_pool == 0
             and self.latent_width % self.critic_pool == 0,
             f"critic_pool must be >= 1 and divide the latent grid {self.latent_height} x {self.latent_width}, "
             f"got {self.critic_pool}")
        adversarial = self.adversarial > 0 or self.adversarial_pair > 0
        need(not self.view_memory or not adversarial,
             "adversarial training judges frames made without the view memory: set view_memory=false to train")
        need(self.chunk_frames == 1 or not adversarial,
             f"adversarial rolls out one frame at a time: it needs chunk_frames=1, got {self.chunk_frames}")
        need(self.chunk_frames == 1 or self.rollout_context == 0.0,
             f"rollout_context samples one frame at a time: it needs chunk_frames=1, got {self.chunk_frames}")
        need(0.0 <= self.context_noise < 1.0, f"context_noise must lie in [0, 1), got {self.context_noise}")
        need(self.sample_steps >= 1, f"sample_steps must be >= 1, got {self.sample_steps}")
        need(self.sample_shift > 0, f"sample_shift must be > 0, got {self.sample_shift}")
        need(0.0 < self.sample_start <= 1.0, f"sample_start must lie in (0, 1], got {self.sample_start}")
        need(self.sample_start == 1.0 or self.chunk_frames == 1,
             f"sample_start < 1 starts a frame from the one before it: it needs chunk_frames=1, got {self.chunk_frames}")
        need(0.0 <= self.idle_start < 1.0, f"idle_start must lie in [0, 1), got {self.idle_start}")
        need(self.idle_start == 0.0 or self.chunk_frames == 1,
             f"idle_start starts a frame from the one before it: it needs chunk_frames=1, got {self.chunk_frames}")
        need(self.idle_start == 0.0 or self.rollout_context == 0.0,
             "rollout_context makes the model's frames from noise: it needs idle_start=0")
        need(self.idle_turn >= 0.0, f"idle_turn must be >= 0 degrees per tick, got {self.idle_turn}")
        need(0.0 <= self.latent_guard < 50.0, f"latent_guard is a percentile in [0, 50), got {self.latent_guard}")
        if self.guard_range is not None:
            bounds = tuple(float(v) for v in self.guard_range)
            C = self.latent_channels
            need(len(bounds) == 2 * C and all(math.isfinite(v) for v in bounds)
                 and all(lo <= hi for lo, hi in zip(bounds[:C], bounds[C:])),
                 f"guard_range must be {2 * C} finite numbers, each channel's low <= high (lows, then highs), "
                 f"got {self.guard_range!r}")
            self.guard_range = bounds
        need(0.0 <= self.spread_guard < 50.0, f"spread_guard is a percentile in [0, 50), got {self.spread_guard}")
        if self.spread_floor is not None:
            floor = tuple(float(v) for v in self.spread_floor)
            need(len(floor) == self.latent_channels and all(math.isfinite(v) and v >= 0 for v in floor),
                 f"spread_floor must be {self.latent_channels} finite numbers >= 0 (one per channel), "
                 f"got {self.spread_floor!r}")
            self.spread_floor = floor
        need(0.0 <= self.start_bridge <= 1.0, f"start_bridge must lie in [0, 1], got {self.start_bridge}")
        need(self.start_bridge == 0.0 or self.sample_start < 1.0,
             "start_bridge trains the path from the previous frame that sample_start < 1 samples: it needs sample_start < 1")
        need(self.sample_start == 1.0 or self.rollout_context == 0.0,
             "rollout_context makes the model's frames from noise: it needs sample_start=1")
        need(self.prev_input or not self.residual, "residual needs prev_input (the previous frame it adds to)")
        need(self.change_var > 0, f"change_var must be > 0, got {self.change_var}")
        need(0.0 <= self.camera_warp < 180.0,
             f"camera_warp must be a field of view in degrees within (0, 180), or 0 (off), got {self.camera_warp}")
        need(self.prev_input or self.camera_warp == 0.0, "camera_warp turns the previous frame: it needs prev_input")
        need(0 <= self.warp_keep_rows <= self.latent_height,
             f"warp_keep_rows must lie in [0, latent_height={self.latent_height}], got {self.warp_keep_rows}")
        need(not self.view_memory or self.camera_warp > 0,
             "view_memory fills in what the camera warp reveals: it needs camera_warp > 0")
        need(self.view_memory_frames >= 1, f"view_memory_frames must be >= 1, got {self.view_memory_frames}")
        need(not self.keep_view or self.camera_warp > 0,
             "keep_view keeps the last frame turned by the camera warp: it needs camera_warp > 0")
        need(not self.keep_view or self.chunk_frames == 1,
             f"keep_view continues each frame from the one before it: it needs chunk_frames=1, got {self.chunk_frames}")


def with_sampling(config: DynamicsConfig, **values) -> DynamicsConfig:
    """`config` with the sampling settings given (context_noise=, sample_shift=, ...); None keeps the config's."""
    return replace(config, **{k: v for k, v in values.items() if v is not None})


def sample_levels(steps: int, shift: float = 1.0) -> list:
    """The levels 1 = t_0 > t_1 > .. > t_steps = 0 of the sampler's Euler steps: even, then shifted
    t -> s t / (1 + (s - 1) t) (s = config.sample_shift; s > 1 spends the steps at high noise)."""
    return [shift * t / (1 + (shift - 1) * t) for t in (1 - i / steps for i in range(steps + 1))]


def step_levels(config: DynamicsConfig, steps: int | None = None) -> list:
    """The levels the sampler's Euler steps go through for this config: `sample_levels(steps, sample_shift)`
    scaled by `sample_start`, so they start there and end at 0 (steps: the config's sample_steps by default)."""
    return [config.sample_start * t for t in sample_levels(steps or config.sample_steps, config.sample_shift)]
