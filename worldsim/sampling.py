"""The dynamics sampler: a ring-buffer KV cache per layer (worldsim/kv_cache.py), prefill, per-chunk Euler
denoising, commit.

Plain functions over (model, caches), gpt-fast style, and a small `Sampler` that holds the state of one
play or one batch of rollouts:

    prefill(model, caches, latents, actions, noise)          # prompt frames, once
    x = denoise_chunk(model, caches, actions, frame, noise, steps)   # S Euler steps; writes nothing
    commit_chunk(model, caches, x, actions, frame, noise)    # one pass of the finished chunk; writes K/V
    # or: commit the previous chunk inside the next chunk's first Euler step (S passes per chunk, not S + 1)
    x2 = commit_and_denoise(model, caches, x, actions, commit_noise, actions2, frame + K, noise2, steps)
    # or (`commit_last_step`): the last Euler step's pass writes the chunk, at that step's level (S passes, no commit)
    x = denoise_chunk(model, caches, actions, frame, noise, steps, commit_noise=commit_noise)

Actions in these functions are in the model's order: row i is the action that produced frame i (see
worldsim/models/dynamics.py). `Sampler.reset` takes the prompt's actions in the data's order, and
`Sampler.step(a)` takes the action the player takes while seeing the latest frame, which produces the next.

Finished frames enter the cache at the noise level `config.context_noise`: the clean latent is mixed with
fresh noise, x = (1 - s) x0 + s eps, and the pass is conditioned on s, as context frames are in training.
With `commit_last_step` they enter instead as the last Euler step saw them, on the sampler's own path at that
step's level (for 2 steps from 0.6: 0.3 at sample_shift 1, 0.2 at 0.5), which training's context levels (up to
context_noise_max) cover.
Each cache holds the last `context_frames - chunk_frames` frames; time positions keep growing (the rotary
angles are computed in float64), so nothing is rewritten when the ring wraps.
"""
import contextlib
import functools
from dataclasses import dataclass

import torch

from worldsim.kv_cache import make_caches
from worldsim.models.camera import keeps_view, known_view, turn_previous, warp_previous
from worldsim.models.dynamics import (ACTION_DIM, DynamicsModel, check_actions, check_latents,  # noqa: F401
                                      per_frame, start_levels)
from worldsim.models.dynamics_config import sample_levels, step_levels
from worldsim.view_memory import ViewMemory


def _no_grad(fn):
    """Run `fn` under inference_mode, or under no_grad where torch.compile traces it (compiled code cannot write in
    place to tensors made under inference_mode: the compiled sampler keeps its state in normal tensors)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode():
            return fn(*args, **kwargs)
    return wrapper


def _positions(first, frames: int, device):
    """Absolute frame indices first .. first + frames - 1; `first` an int or a 0-d int64 device tensor (the
    graphed sampler's frame counter, so that a replayed CUDA graph reads the current frame)."""
    return first + torch.arange(frames, device=device)


def context_noised(model, latents, noise):
    """Latents moved to the context noise level, and that level per frame (B, F)."""
    s = model.config.context_noise
    levels = torch.full(latents.shape[:2], s, device=latents.device)
    return (1 - s) * latents + s * noise, levels


def last_frame(model, latents, noise):
    """(latents, levels) of a finished chunk's last frame as it enters the caches: the `prev_frame` of the
    frame after it (models with prev_input embed it)."""
    return context_noised(model, latents[:, -1:], noise[:, -1:])


@_no_grad
def prefill(model, caches, latents, actions, noise, fill=None):
    """Write the prompt (B, P, C, h, w), P a multiple of chunk_frames, into empty caches; actions (B, P, 25)
    in model order; fill: the view memory's for each prompt frame. One block-causal pass over the prompt."""
    x, levels = context_noised(model, latents, noise)
    model(x, actions, levels, _positions(0, latents.shape[1], latents.device), caches, mode="prefill", fill=fill)


def chunk_levels(model, actions, steps: int | None = None) -> list:
    """The levels a chunk's Euler steps go through, from its start to 0: `step_levels` (floats) for every frame
    alike, or with `idle_start` (B, K) tensors, each frame's own start (`start_levels`) times the same steps."""
    c = model.config
    start = start_levels(c, actions)
    if not torch.is_tensor(start):
        return step_levels(c, steps)
    return [start * t for t in sample_levels(steps or c.sample_steps, c.sample_shift)]


def keep_known(x, level, known):
    """x (B, K, C, h, w) at `level` with what is known of the view put back: known = (view, where, noise) from
    `known_view` and the chunk's start noise, the view noised to the level on the path the steps follow."""
    if known is None:
        return x
    view, where, noise = known
    s = per_frame(level, x.dtype)
    return torch.where(where, (1 - s) * view + s * noise, x)


def _known(model, noise, last, actions, fill, turned=None, inside=None):
    """With `keep_view`, what is known of the chunk's view (`keep_known`'s triple) and the frame before the chunk
    turned (the start's guess, made once for both; `turned`, and the turn's `inside`, where the caller has them);
    else (None, turned)."""
    c = model.config
    if not c.keep_view:
        return None, turned
    if last is None:
        raise ValueError("keep_view keeps the view of the frame before the chunk: give prev_frame")
    if turned is None:
        turned, inside = turn_previous(last, actions, c.camera_warp, c.warp_keep_rows, fill)
    view, where = known_view(last, actions, c.camera_warp, c.warp_keep_rows, fill, turned, keeps_view(c, actions),
                             inside)
    return (view, where, noise), turned


def _whole_view_known(known, x) -> bool:
    """Whether every row knows its whole view (`keep_view`: it stands, or turns within what it saw): then each
    Euler step would put the known view back over what the model made, and the steps end where they start, on
    the view at level 0, so they are skipped. Asked on the CPU only: the read is a host sync on CUDA, where the
    graphed step takes the steps anyway."""
    return (known is not None and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and bool(known[1].all()))


def _euler(model, caches, actions, frame: int, x, ts: list, prev_frame=None, fill=None, known=None, inputs=None,
           write_last: bool = False):
    """Euler steps of the chunk x (B, K, ...) through the noise levels ts (floats, or per frame (B, K)) against
    the caches, what is `known` of the view kept at every level; the made frames are kept in the model's
    guard_range. inputs: the chunk's `frame_inputs` (K = 1), computed once for every step. write_last: the last
    step's pass also writes the chunk's keys and values (`commit_last_step`); the caches are read only otherwise.
    Returns the frames and whether the chunk was written (never when no step runs)."""
    B, K = x.shape[:2]
    pos = _positions(frame, K, x.device)
    x = keep_known(x, ts[0], known)
    if _whole_view_known(known, x):
        return model.guard(keep_known(x, ts[-1], known)), False
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        levels = t if torch.is_tensor(t) else torch.full((B, K), t, device=x.device)
        mode = "read_write" if write_last and i == len(ts) - 2 else "read"
        v = model(x, actions, levels, pos, caches, mode=mode, prev_frame=prev_frame, fill=fill, inputs=inputs)
        x = keep_known(x + per_frame(t_next - t, x.dtype) * v, t_next, known)
    return model.guard(x), write_last


def last_step_commits(config, steps: int | None = None) -> bool:
    """Whether, with `config.commit_last_step`, a chunk enters the caches from its last Euler step's pass: when
    that step's level is one training gave context frames (at most context_noise_max) for every frame, idle
    starts included (decided from the config alone: no host sync). Else a commit pass of the made chunk follows."""
    if not config.commit_last_step:
        return False
    last = sample_levels(steps or config.sample_steps, config.sample_shift)[-2]
    start = max(config.sample_start, config.idle_start)
    return start * last <= config.context_noise_max + 1e-6


def start_point(model, noise, last, actions, start, fill=None, turned=None):
    """Where a chunk's Euler steps start: the noise itself at a start of 1; below, the frame before the chunk
    as it entered the caches (`last`, (B, 1, C, h, w)), turned by the chunk's camera move where the model warps
    (and filled from the view memory where the turn reveals what it did not hold), noised to `start` (the first
    of `chunk_levels`: a float, or per frame (B, K)). turned: that turned frame where the caller made it already."""
    if not torch.is_tensor(start) and start == 1.0:
        return noise
    if last is None:
        raise ValueError("a start below 1 starts a chunk from the frame before it: give prev_frame")
    c = model.config
    if turned is not None:
        guess = turned
    else:
        guess = warp_previous(last, actions, c.camera_warp, c.warp_keep_rows, fill) if c.camera_warp else last
    s = per_frame(start, noise.dtype)
    return (1 - s) * guess + s * noise


@_no_grad
def denoise_chunk(model, caches, actions, frame: int, noise, steps: int, prev_frame=None, fill=None, inputs=None,
                  commit_noise=None):
    """Euler-integrate the chunk (B, K, ...) starting at `frame` from its `start_point` (t = sample_start, 1:
    noise) to t = 0 against the caches, which are read only. actions (B, K, 25) in model order; prev_frame:
    `last_frame` of the frame before the chunk; fill: the view memory's `render` for the chunk; inputs: the
    chunk's `model.frame_inputs` (K = 1: computed here when not given). Returns the clean latents.

    With commit_noise (`commit_last_step`), the chunk also enters the caches: from its last Euler step's pass where
    `last_step_commits`, else (or when no step runs) by `commit_chunk` of the made chunk with that noise."""
    ts = chunk_levels(model, actions, steps)
    last = None if prev_frame is None else prev_frame[0]
    if inputs is None and model.config.chunk_frames == 1:
        inputs = model.frame_inputs(actions, _positions(frame, 1, noise.device), prev_frame, fill)
    warped = inputs is not None and model.config.camera_warp and last is not None
    turned, inside = (inputs.prev, inputs.inside) if warped else (None, None)
    known, turned = _known(model, noise, last, actions, fill, turned, inside)
    x = start_point(model, noise, last, actions, ts[0], fill, turned)
    x, wrote = _euler(model, caches, actions, frame, x, ts, prev_frame, fill, known, inputs,
                      write_last=commit_noise is not None and last_step_commits(model.config, steps))
    if commit_noise is not None and not wrote:
        commit_chunk(model, caches, x, actions, frame, commit_noise, prev_frame, fill, inputs)
    return x


@_no_grad
def commit_and_denoise(model, caches, prev, prev_actions, prev_noise, actions, frame: int, noise, steps: int,
                       before=None, prev_fill=None, fill=None):
    """`commit_chunk` of the finished chunk `prev` (frames frame - K ..) and `denoise_chunk` of the next one,
    with the commit sharing a pass with the first Euler step: S passes per chunk instead of S + 1.
    before: `last_frame` of the frame before `prev`; prev_fill and fill: the view memory's for each chunk."""
    B, K = noise.shape[:2]
    ts = chunk_levels(model, actions, steps)
    context, context_levels = context_noised(model, prev, prev_noise)
    last = (context[:, -1:], context_levels[:, -1:])
    inputs = None  # K = 1: the chunk's inputs made once for the Euler steps after the fused pass, as denoise_chunk
    if model.config.chunk_frames == 1:
        inputs = model.frame_inputs(actions, _positions(frame, 1, noise.device), last, fill)
    turned, inside = (inputs.prev, inputs.inside) if inputs is not None and model.config.camera_warp else (None, None)
    known, turned = _known(model, noise, last[0], actions, fill, turned, inside)
    x = keep_known(start_point(model, noise, last[0], actions, ts[0], fill, turned), ts[0], known)
    if _whole_view_known(known, x):  # the commit alone: the steps would change nothing
        commit_chunk(model, caches, prev, prev_actions, frame - K, prev_noise, before, prev_fill)
        return model.guard(keep_known(x, ts[-1], known))
    first = ts[0] if torch.is_tensor(ts[0]) else torch.full((B, K), ts[0], device=noise.device)
    levels = torch.cat([context_levels, first], dim=1)  # (B, 2K)
    both = None if fill is None else tuple(torch.cat(pair, dim=1) for pair in zip(prev_fill, fill))
    v = model(torch.cat([context, x], dim=1), torch.cat([prev_actions, actions], dim=1), levels,
              _positions(frame - K, 2 * K, noise.device), caches, mode="commit_read", prev_frame=before,
              fill=both)[:, K:]
    return _euler(model, caches, actions, frame, x + per_frame(ts[1] - ts[0], x.dtype) * v, ts[1:], last, fill,
                  known, inputs)[0]


@_no_grad
def commit_chunk(model, caches, latents, actions, frame: int, noise, prev_frame=None, fill=None, inputs=None):
    """One pass of the finished chunk at the context noise level that writes its keys and values; inputs: its
    `frame_inputs`, where its Euler steps computed them."""
    x, levels = context_noised(model, latents, noise)
    model(x, actions, levels, _positions(frame, latents.shape[1], latents.device), caches, mode="write",
          prev_frame=prev_frame, fill=fill, inputs=inputs)


@functools.cache
def _recompile_limit():
    """The config patch every compiled body runs under: one compiled graph per body, model config and step count is
    more than dynamo's default 8 in one process (the tests, a player trying step counts), which would fall back to
    eager. Built once and entered again each call: each `config.patch(...)` object owns a new ContextVar that stays
    in the thread's context after its `with` ends, so one built per call kept one entry a call (about 0.4 KB a frame
    in compiled play, 30 MB an hour)."""
    config = torch._dynamo.config
    return config.patch(**{"recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit": 64})


@dataclass
class SamplerState:
    """Everything a sampler needs to continue exactly: cache contents, frame counter, RNG, steps, the last
    chunk when it is not in the caches yet, and the view memory."""
    caches: list
    frame: int
    rng: torch.Tensor
    steps: int
    pending: tuple | None
    last: tuple | None
    memory: dict | None = None


class Sampler:
    """One play or a batch of rollouts: `reset(prompt)`, then `step(actions)` -> the next chunk's latents.

    With `fuse_commit` (the default) a chunk's commit pass runs inside the next `step`, sharing a pass with
    that chunk's first Euler step (`commit_and_denoise`); the results are those of committing at once.

    With `graphs`, those fused steps read and write only fixed buffers (the caches, the pending chunk, the frame
    counter as a device tensor, the noise drawn into a buffer) and, on CUDA, replay as one CUDA graph per step
    count, captured on first use: a step is then one launch instead of hundreds. Elsewhere the same buffered
    step runs eagerly (the tests check it against the plain one). The results equal the plain sampler's.
    `commit` splits the buffered step as it splits the plain one: a commit body now, a denoise body at the next
    step (one graph each on CUDA).

    With `compile` (and `graphs`) that buffered step runs under torch.compile as one graph (fullgraph; the attention
    is one opaque op, `kernels.cache_attention`), compiled at the first step of each step count and, on CUDA, then
    captured: its hundreds of small ops fuse into a few dozen kernels. True: inductor; a string: that backend.

    With `config.view_memory` every finished frame is also painted into a `ViewMemory` panorama (by `commit`, or
    by the next step before it looks), and each new chunk's previous frame is filled from it where the chunk's
    turn reveals what the last frame did not hold.

    With `config.commit_last_step` a chunk enters the caches from its last Euler step's pass (`last_step_commits`),
    so nothing is left pending and a step is S passes with no commit pass; graphed, it is one graph as well.

    With `config.keep_view` a frame whose action holds no button and stands or turns faster than idle_turn
    (`keeps_view`) keeps what is known of its view (`known_view`) at every Euler step (`keep_known`), and paints
    into the panorama only what it did not hold."""

    def __init__(self, model: DynamicsModel, batch_size: int = 1, steps: int | None = None, seed: int = 0,
                 fuse_commit: bool = True, graphs: bool = False, compile: bool | str = False):
        self.model = model.eval()
        self.config = model.config
        self.batch_size = batch_size
        self.device = model.head.weight.device
        self.caches = make_caches(model, batch_size)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.steps = steps or self.config.sample_steps
        self.fuse_commit = fuse_commit
        self.frame = 0
        self.pending = None  # (latents, actions, commit noise, fill) of the last chunk while not in the caches
        self.last = None     # `last_frame` of the last frame in the caches (the next chunk's prev_frame)
        if graphs and not fuse_commit:
            raise ValueError("graphs=True replays the fused step: it needs fuse_commit=True")
        self.graphs = graphs
        if compile and not graphs:
            raise ValueError("compile compiles the buffered step that graphs=True runs: it needs graphs=True")
        if not isinstance(compile, (bool, str)):
            raise ValueError(f"compile must be true, false or a torch.compile backend's name, got {compile!r}")
        self.compile = compile
        self.capture = True  # on CUDA, capture and replay the buffered step as graphs (False: run it as on the CPU)
        # the buffered step's bodies (fused, commit, denoise), under torch.compile where asked: one graph each, no
        # breaks (fullgraph)
        self._bodies = {"fused": self._graph_body, "commit": self._commit_body, "denoise": self._denoise_body}
        if compile:
            backend = "inductor" if compile is True else compile
            self._bodies = {kind: torch.compile(body, fullgraph=True, dynamic=False, backend=backend)
                            for kind, body in self._bodies.items()}
        self._buffers = None  # the graphed step's fixed inputs and outputs, made on first use
        self._buffered = False  # whether pending/last live in the buffers (else in self.pending / self.last)
        self._committed = False  # buffered: whether `commit` ran the pending chunk's commit pass (the step denoises)
        self._graphs: dict = {}  # (body, steps) -> torch.cuda.CUDAGraph
        self.memory = ViewMemory(self.config, batch_size, self.device, model.head.weight.dtype) \
            if self.config.view_memory else None
        self._unpainted = None  # (latents, commit noise, views, only_new): the last chunk, until painted
        self._pending_inputs = None  # the pending chunk's frame_inputs, for its commit (K = 1, not fused)

    def _noise(self, frames: int):
        c = self.config
        shape = (self.batch_size, frames, c.latent_channels, c.latent_height, c.latent_width)
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.model.head.weight.dtype)

    def reset(self, prompt_latents, prompt_actions):
        """Start from prompt latents (B, P, C, h, w) and the P - 1 actions between them (B, P - 1, 25), in the
        data's order: prompt_actions[:, i] was taken at frame i and produced frame i + 1."""
        check_latents(prompt_latents, self.config)
        B, P = prompt_latents.shape[:2]
        if P == 0:
            raise ValueError("the prompt needs at least one frame")
        if B != self.batch_size:
            raise ValueError(f"prompt batch {B} does not match the sampler's batch_size {self.batch_size}")
        if P % self.config.chunk_frames:
            raise ValueError(f"prompt of {P} frames must be a multiple of chunk_frames={self.config.chunk_frames}")
        if not torch.is_tensor(prompt_actions) or prompt_actions.dim() != 3 or prompt_actions.shape[1] != P - 1:
            shape = tuple(prompt_actions.shape) if torch.is_tensor(prompt_actions) else type(prompt_actions).__name__
            raise ValueError(f"prompt_actions must be (B, P - 1 = {P - 1}, 25), the actions between the prompt "
                             f"frames; the action taken at the last prompt frame goes to step(); got {shape}")
        check_actions(prompt_actions, (B, P - 1))
        actions = torch.cat([prompt_actions.new_zeros(B, 1, prompt_actions.shape[2]), prompt_actions], dim=1)
        actions = actions.to(self.device)
        for cache in self.caches:
            cache.reset()
        self.pending, self._buffered, self._unpainted, self._pending_inputs = None, False, None, None
        self._committed = False
        noise, prompt_latents = self._noise(P), prompt_latents.to(self.device)
        fill = None
        if self.memory is not None:  # the prompt's frames fill one another, and stay in the panorama
            self.memory.reset()
            with torch.inference_mode():
                fill = self.memory.fill_clip(context_noised(self.model, prompt_latents, noise)[0], actions)
        prefill(self.model, self.caches, prompt_latents, actions, noise, fill)
        self.last = last_frame(self.model, prompt_latents, noise)
        self.frame = P

    def _only_new(self, actions):
        """With `keep_view`, the frames that paint only what the panorama did not hold: those that kept their
        view (`keeps_view`), so that a turn does not paint its own copies over what it saw."""
        return keeps_view(self.config, actions) if self.config.keep_view else None

    def step(self, actions, steps: int | None = None):
        """actions (B, K, 25), or (B, 25) when chunk_frames is 1: row j is the action taken while seeing the
        frame before new frame j. Returns the new chunk's latents (B, K, C, h, w)."""
        if self.frame == 0:
            raise RuntimeError("Sampler.step before reset: give it a prompt first")
        K = self.config.chunk_frames
        if torch.is_tensor(actions) and actions.dim() == 2 and K == 1:
            actions = actions[:, None]
        check_actions(actions, (self.batch_size, K))
        actions = actions.to(self.device)
        steps = steps or self.steps
        if self.graphs and (self.pending is not None or self._buffered or self.config.commit_last_step):
            return self._graphed_step(actions, steps)
        views = fill = None
        if self.memory is not None:
            self._paint()
            with torch.inference_mode():
                views = self.memory.views(actions)
                fill = self.memory.render(views)
        inputs = None
        if self.config.commit_last_step:  # the chunk enters the caches as it is made: nothing stays pending
            if K == 1:
                inputs = self.model.frame_inputs(actions, _positions(self.frame, 1, self.device), self.last, fill)
            noise = self._noise(K)
            commit_noise = self._noise(K)  # drawn in the plain step's order: the chunk's noise, then its commit's
            x = denoise_chunk(self.model, self.caches, actions, self.frame, noise, steps, self.last, fill, inputs,
                              commit_noise=commit_noise)
            self.last = last_frame(self.model, x, commit_noise)
            if self.memory is not None:
                self._unpainted = (x.clone(), commit_noise, views, self._only_new(actions))
            self.frame += K
            return x
        if self.pending is None:
            if K == 1:  # computed once for the Euler steps and the commit
                inputs = self.model.frame_inputs(actions, _positions(self.frame, 1, self.device), self.last, fill)
            x = denoise_chunk(self.model, self.caches, actions, self.frame, self._noise(K), steps, self.last, fill,
                              inputs)
        else:
            prev, prev_actions, prev_noise, prev_fill = self.pending
            x = commit_and_denoise(self.model, self.caches, prev, prev_actions, prev_noise, actions, self.frame,
                                   self._noise(K), steps, before=self.last, prev_fill=prev_fill, fill=fill)
            self.last = last_frame(self.model, prev, prev_noise)
        # Copies: the caller may reuse its action buffer or edit the returned latents before the commit.
        self.pending = (x.clone(), actions.clone(), self._noise(K), fill)
        self._pending_inputs = inputs
        if self.memory is not None:  # painted by `commit`, or by the next step before it looks
            self._unpainted = (self.pending[0], self.pending[2], views, self._only_new(actions))
        if not self.fuse_commit:
            commit_chunk(self.model, self.caches, *self.pending[:2], self.frame, self.pending[2], self.last, fill,
                         inputs)
            self.last = last_frame(self.model, self.pending[0], self.pending[2])
            self.pending = self._pending_inputs = None
        self.frame += K
        return x

    def _paint(self) -> None:
        """Paint the last chunk into the view memory, if it is not yet."""
        if self._unpainted is not None:
            latents, noise, views, only_new = self._unpainted
            with torch.inference_mode():
                self.memory.write(context_noised(self.model, latents, noise)[0], views, only_new=only_new)
            self._unpainted = None

    def commit(self) -> bool:
        """Run the last chunk's commit pass now, if it has not run, and paint it into the view memory: the part
        of the next `step` that does not depend on its actions. The next step then only denoises (S passes of
        one chunk instead of a pass of two chunks and S - 1 of one), and returns what it would have returned
        (the same as `fuse_commit=False`). Play calls it while the last frame is shown, so that the step after
        the next input is shorter. With `graphs` the buffered step splits the same way: the commit body now (a graph
        of its own on CUDA), the denoise body in the next step; a chunk the plain path made (the first after a reset or
        a restore) moves into the buffers first, so that play, which commits after every step, never runs the fused
        body (one graph fewer to compile or capture). False when there was no commit to run."""
        if self.graphs:
            if self._committed or self.config.commit_last_step or (not self._buffered and self.pending is None):
                return False
            with self._mode():
                if not self._buffered:
                    self._paint()  # the plain step left its chunk unpainted
                    self._enter_buffers()
                self._run(("commit", None))
            self._committed = True
            return True
        self._paint()
        if self.pending is None:
            return False
        latents, actions, noise, fill = self.pending
        commit_chunk(self.model, self.caches, latents, actions, self.frame - latents.shape[1], noise, self.last, fill,
                     self._pending_inputs)
        self.last = last_frame(self.model, latents, noise)
        self.pending = self._pending_inputs = None
        return True

    # -- the graphed step: fixed buffers, one CUDA graph per step count ------------------------------------

    def _make_buffers(self) -> dict:
        c, B, K = self.config, self.batch_size, self.config.chunk_frames
        latent = (B, K, c.latent_channels, c.latent_height, c.latent_width)
        dtype, device = self.model.head.weight.dtype, self.device
        zeros = lambda *shape, dtype=dtype: torch.zeros(shape, dtype=dtype, device=device)
        buffers = {"actions": zeros(B, K, ACTION_DIM), "noise": zeros(*latent), "commit_noise": zeros(*latent),
                   "prev": zeros(*latent), "prev_actions": zeros(B, K, ACTION_DIM), "prev_noise": zeros(*latent),
                   "before": zeros(B, 1, *latent[2:]), "before_levels": zeros(B, 1, dtype=torch.float32),
                   "out": zeros(*latent), "frame": torch.zeros((), dtype=torch.int64, device=device)}
        if self.memory is not None:
            buffers["prev_fill"] = zeros(*latent)
            buffers["prev_valid"] = zeros(B, K, 1, *latent[3:], dtype=torch.bool)
        return buffers

    def _graph_body(self, steps: int) -> None:
        """The fused step on the buffers: commit `prev`, denoise the next chunk from `noise`, move it to `prev`.
        With `commit_last_step`: denoise the next chunk, which enters the caches as it is made."""
        b, K = self._buffers, self.config.chunk_frames
        views = fill = prev_fill = None
        if self.memory is not None:
            views = self.memory.views(b["actions"])
            fill = self.memory.render(views)
            if not self.config.commit_last_step:
                prev_fill = (b["prev_fill"], b["prev_valid"])
        if self.config.commit_last_step:
            x = denoise_chunk(self.model, self.caches, b["actions"], b["frame"], b["noise"], steps,
                              (b["before"], b["before_levels"]), fill, commit_noise=b["commit_noise"])
            if self.memory is not None:
                self.memory.write(context_noised(self.model, x, b["commit_noise"])[0], views,
                                  only_new=self._only_new(b["actions"]))
            last, last_levels = last_frame(self.model, x, b["commit_noise"])
            b["before"].copy_(last)
            b["before_levels"].copy_(last_levels)
            b["out"].copy_(x)
            b["frame"].add_(K)
            return
        x = commit_and_denoise(self.model, self.caches, b["prev"], b["prev_actions"], b["prev_noise"], b["actions"],
                               b["frame"], b["noise"], steps, before=(b["before"], b["before_levels"]),
                               prev_fill=prev_fill, fill=fill)
        last, last_levels = last_frame(self.model, b["prev"], b["prev_noise"])
        b["before"].copy_(last)
        b["before_levels"].copy_(last_levels)
        self._after_denoise(x, views, fill)

    def _commit_body(self, steps=None) -> None:
        """The pending chunk's commit pass alone (`commit`): its keys and values enter the caches, and it becomes
        the next chunk's previous frame."""
        b, K = self._buffers, self.config.chunk_frames
        prev_fill = (b["prev_fill"], b["prev_valid"]) if self.memory is not None else None
        commit_chunk(self.model, self.caches, b["prev"], b["prev_actions"], b["frame"] - K, b["prev_noise"],
                     (b["before"], b["before_levels"]), prev_fill)
        last, last_levels = last_frame(self.model, b["prev"], b["prev_noise"])
        b["before"].copy_(last)
        b["before_levels"].copy_(last_levels)

    def _denoise_body(self, steps: int) -> None:
        """The step after `commit`: denoise the next chunk against the caches, which hold every frame before it,
        and move it to `prev`, as the fused body does."""
        b = self._buffers
        views = fill = None
        if self.memory is not None:
            views = self.memory.views(b["actions"])
            fill = self.memory.render(views)
        x = denoise_chunk(self.model, self.caches, b["actions"], b["frame"], b["noise"], steps,
                          (b["before"], b["before_levels"]), fill)
        self._after_denoise(x, views, fill)

    def _after_denoise(self, x, views, fill) -> None:
        """The made chunk painted into the view memory and moved to `prev` (pending) and `out`."""
        b, K = self._buffers, self.config.chunk_frames
        if self.memory is not None:
            self.memory.write(context_noised(self.model, x, b["commit_noise"])[0], views,
                              only_new=self._only_new(b["actions"]))
            b["prev_fill"].copy_(fill[0])
            b["prev_valid"].copy_(fill[1])
        b["prev"].copy_(x)
        b["prev_actions"].copy_(b["actions"])
        b["prev_noise"].copy_(b["commit_noise"])
        b["out"].copy_(x)
        b["frame"].add_(K)

    def _run(self, key: tuple) -> None:
        """Run body `key` = (fused | commit | denoise, steps): replayed as a CUDA graph on CUDA, else called."""
        if self.device.type == "cuda" and self.capture:
            self._replay(key)
        else:
            self._run_body(key)

    def _run_body(self, key: tuple) -> None:
        kind, steps = key
        if not self.compile:
            return self._bodies[kind](steps)
        with _recompile_limit():
            return self._bodies[kind](steps)

    def _mode(self):
        """The grad mode of the buffered step: inference_mode, as everywhere in sampling; compiled, no_grad outside
        inference_mode whatever the caller's mode. Compiled code cannot write in place to tensors made under
        inference_mode (the buffers are made here, as normal tensors), and a compiled body's guards hold the mode:
        one mode for every caller (a reset, a step, play's commit ahead) is what keeps it from compiling again."""
        if not self.compile:
            return torch.inference_mode()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.no_grad())
        return stack

    def _graphed_step(self, actions, steps: int):
        with self._mode():
            return self._buffered_step(actions, steps)

    def _buffered_step(self, actions, steps: int):
        K = self.config.chunk_frames
        self._paint()  # the plain step before left its chunk unpainted
        if not self._buffered:
            self._enter_buffers()
        b = self._buffers
        b["actions"].copy_(actions)
        b["noise"].copy_(self._noise(K))  # drawn in the order of the plain step: the chunk's, then its commit's
        b["commit_noise"].copy_(self._noise(K))
        self._run(("denoise" if self._committed else "fused", steps))
        self._committed = False
        self.frame += K
        return b["out"].clone()

    def _enter_buffers(self) -> None:
        """Move the plain path's state into the buffers: the last frame, and the chunk pending its commit (with
        `commit_last_step` nothing pends)."""
        if self._buffers is None:
            self._buffers = self._make_buffers()
        b = self._buffers
        if self.config.commit_last_step:
            b["before"].copy_(self.last[0])
            b["before_levels"].copy_(self.last[1])
        else:
            prev, prev_actions, prev_noise, prev_fill = self.pending
            for name, value in zip(("prev", "prev_actions", "prev_noise", "before", "before_levels"),
                                   (prev, prev_actions, prev_noise, *self.last)):
                b[name].copy_(value)
            if prev_fill is not None:
                b["prev_fill"].copy_(prev_fill[0])
                b["prev_valid"].copy_(prev_fill[1])
        b["frame"].fill_(self.frame)
        self.pending = self.last = self._pending_inputs = None
        self._buffered = True

    def _replay(self, key: tuple) -> None:
        graph = self._graphs.get(key)
        if graph is None:
            # warm up (compiles and tunes the kernels) on a side stream, then put the state back and capture
            saved = self._capture_state()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._run_body(key)
            torch.cuda.current_stream().wait_stream(stream)
            self._put_state(saved)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._run_body(key)
            self._graphs[key] = graph
        graph.replay()

    def _capture_state(self) -> dict:
        return {"caches": self._cache_copies(), "buffers": {name: buf.clone() for name, buf in self._buffers.items()},
                "memory": None if self.memory is None else self.memory.state()}

    def _put_state(self, saved: dict) -> None:
        self._put_caches(saved["caches"])
        for name, buf in self._buffers.items():
            buf.copy_(saved["buffers"][name])
        if self.memory is not None:
            self.memory.load(saved["memory"])

    def _cache_copies(self) -> list[dict]:
        return [{name: buf.clone() for name, buf in cache.named_buffers()} for cache in self.caches]

    def _put_caches(self, copies: list[dict]) -> None:
        with torch.inference_mode():
            for cache, saved in zip(self.caches, copies, strict=True):
                for name, buf in cache.named_buffers():
                    buf.copy_(saved[name])

    def snapshot(self) -> SamplerState:
        """A copy of the whole state, for rewind and branching (cheap: the cache is W frames)."""
        if self.memory is not None:
            self._paint()  # what the next step would do first: the state then holds the panorama whole
        pending, last = self.pending, self.last
        if self._buffered:
            b = self._buffers
            last = (b["before"].clone(), b["before_levels"].clone())
            if not self.config.commit_last_step and not self._committed:  # committed: the caches hold it
                fill = (b["prev_fill"].clone(), b["prev_valid"].clone()) if self.memory is not None else None
                pending = (b["prev"].clone(), b["prev_actions"].clone(), b["prev_noise"].clone(), fill)
        return SamplerState(self._cache_copies(), self.frame, self.generator.get_state(), self.steps, pending, last,
                            None if self.memory is None else self.memory.state())

    def restore(self, state: SamplerState) -> None:
        """Continue from `state`: what follows replays exactly what followed the snapshot."""
        self._put_caches(state.caches)
        # pending and last are never mutated in place (the graphed step copies them into its buffers)
        self.frame, self.steps, self.pending, self.last = state.frame, state.steps, state.pending, state.last
        self._pending_inputs = None  # the commit makes them again from the restored state
        if self.memory is not None:
            self.memory.load(state.memory)
        self._buffered, self._unpainted, self._committed = False, None, False
        self.generator.set_state(state.rng)
