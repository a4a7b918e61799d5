"""Adversarial post-training of the dynamics model on its own rollouts (`dynamics.adversarial` > 0).

Flow matching teaches each Euler step the mean of what could come next; with 2 steps and a tiny model that
mean is a blur, and a long rollout feeds the blur back until the world is a haze. Here, each step, the model
plays `adversarial_frames - 1` frames from a prompt of real ones as the sampler plays them (no gradient), then
makes one more frame the same way, reading the sampler's KV cache, with gradient through its last Euler step.
A critic judges that frame against the clip's real frame at the same place. The model's loss is flow matching
on the clip's last window plus `adversarial` times the critic's hinge verdict; the critic has its own Adam, is
stepped inside the loss, and is saved with each checkpoint (`save_state`, `load_state`) so that a resumed run
goes on exactly.

With `adversarial_pair` > 0 a second critic judges the first frame the model makes from the real prompt (its
context all real: teacher forced), shown beside the real frame before it and the action taken between them, against
the clip's real pair. Given the same real past on both sides it cannot tell the two apart by the past, only by
whether the frame follows from it: it asks for a next frame that fits what came before, where the frame-alone critic
accepts any frame that looks real.

With `adversarial_adaptive` each verdict's weight is rescaled every step by the ratio of flow matching's gradient norm
to the verdict's at the model's output layer (as VQGAN weighs its adversarial loss), so that `adversarial` is the
verdict's share of the gradient there rather than a factor on a critic's arbitrary scale.
"""
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from worldsim.models.dynamics import ACTION_DIM, DynamicsConfig
from worldsim.models.objective import flow_matching_loss
from worldsim.models.dynamics_config import sample_levels
from worldsim.sampling import Sampler
from worldsim.training.checkpoint import CheckpointError, read_tensors, write_tensors
from worldsim.training.wrap import unwrap

CRITIC_FILE = "critic.safetensors"


class LatentCritic(nn.Module):
    """Logit that a latent frame (B, C, h, w) is a real one: spectrally normalised convolutions, pooled.

    By default it sees the frame alone. Shown the model's own frame before it, it would tell the model's frames
    from real ones by that earlier frame (made, so already worn), which the judged frame cannot change: the verdict
    would carry no signal back to the model. With `paired`, it sees the frame beside a frame before it that must
    be the same on both sides (a real one), and the action between them (a projection: the pooled features'
    product with an embedding of the action). With `pool` > 1 it sees the frames average-pooled by that factor:
    their coarse layout, colours and contrast, not their fine texture."""

    def __init__(self, channels: int, width: int = 64, paired: bool = False, pool: int = 1):
        super().__init__()
        sn = spectral_norm
        self.paired, self.pool = paired, pool
        self.body = nn.Sequential(
            sn(nn.Conv2d(channels * (2 if paired else 1), width, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * width, 4 * width, 3, padding=1)), nn.LeakyReLU(0.2))
        self.out = sn(nn.Linear(4 * width, 1))
        self.action = sn(nn.Linear(ACTION_DIM, 4 * width, bias=False)) if paired else None

    def forward(self, frame, before=None, action=None):
        if self.paired != (before is not None and action is not None):
            raise ValueError("a paired critic judges (frame, the frame before, the action); a plain one the frame "
                             "alone")
        x = frame.float() if before is None else torch.cat([before.float(), frame.float()], dim=1)
        x = F.avg_pool2d(x, self.pool) if self.pool > 1 else x
        h = self.body(x).sum(dim=(2, 3))
        logit = self.out(h).squeeze(1)  # (B,)
        if self.action is not None:
            logit = logit + (self.action(action.float()) * h).sum(dim=1)
        return logit


@torch.no_grad()
def prompted(model, latents, actions, prompt: int, seed: int) -> Sampler:
    """A sampler for the clips (B, T, ...) with their first `prompt` frames in its caches: ready to make frame
    `prompt` from real context alone."""
    sampler = Sampler(unwrap(model), batch_size=latents.shape[0], seed=seed, fuse_commit=False)
    sampler.reset(latents[:, :prompt], actions[:, :prompt - 1])
    return sampler


@torch.no_grad()
def play_out(model, latents, actions, prompt: int, seed: int, sampler: Sampler | None = None):
    """The sampler's rollout of the clips (B, T, ...) from their first `prompt` frames under the clips' actions
    (data order), up to frame T - 2 (`sampler`: one from `prompted` to go on with). Returns the clip of T - 1
    frames (the prompt, then the made ones) and the sampler, every frame committed to its caches: it is ready to
    make frame T - 1."""
    sampler = prompted(model, latents, actions, prompt, seed) if sampler is None else sampler
    # clones: the sampler's frames come out of inference mode, and autograd may not save those
    made = [sampler.step(actions[:, i - 1]).clone() for i in range(prompt, latents.shape[1] - 1)]
    return torch.cat([latents[:, :prompt], *made], dim=1), sampler


def judged_frame(model, sampler: Sampler, action, z=None):
    """The sampler's next frame from noise z (B, C, h, w; drawn when None) under `action` (B, 25, the action
    taken at the frame before), made as `Sampler.step` makes it, with gradient through the last Euler step
    (when grad is enabled). The caches are read as they are: the past is a constant, as in play."""
    if sampler.pending is not None or sampler.memory is not None:
        raise ValueError("judged_frame reads a sampler with fuse_commit=False and no view memory")
    B, config = sampler.batch_size, sampler.config
    caches = [SimpleNamespace(k=c.k.clone(), v=c.v.clone(), valid_len=c.valid_len.clone()) for c in sampler.caches]
    prev = tuple(x.clone() for x in sampler.last)  # clones: normal tensors, usable in a graph
    shape = (B, 1, config.latent_channels, config.latent_height, config.latent_width)
    z = torch.randn(shape, device=sampler.device) if z is None else z.reshape(shape).to(sampler.device)
    pos = torch.arange(sampler.frame, sampler.frame + 1, device=sampler.device)
    ts = sample_levels(config.sample_steps, config.sample_shift)
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        levels = torch.full((B, 1), t, device=sampler.device)
        with torch.set_grad_enabled(i == len(ts) - 2 and torch.is_grad_enabled()):
            v = model(z, action[:, None].to(z.dtype), levels, pos, caches, mode="read", prev_frame=prev)
            z = z + (t_next - t) * v.to(z.dtype)
    return z[:, 0]


def enabled(config: DynamicsConfig) -> bool:
    """Whether training runs adversarially (either critic on): train_dynamics then wraps its task in ours."""
    return config.adversarial > 0 or config.adversarial_pair > 0


def clip_frames(config: DynamicsConfig) -> int:
    """Length of the clips adversarial training reads: the prompt, then the frames the model makes."""
    return prompt_length(config) + config.adversarial_frames


def prompt_length(config: DynamicsConfig) -> int:
    return max(1, config.context_frames // 2)


class AdversarialTask:
    """The dynamics TrainTask (`base`, a DynamicsTask) with its critics; batches of `clip_frames` long clips.

    Critics by file prefix: "" judges the last frame of the model's rollout alone (`adversarial`), "pair_" the
    first frame made from the real prompt beside the real frame before it (`adversarial_pair`)."""

    def __init__(self, base):
        self.base, self.config, self.model = base, base.config, base.model
        if not enabled(self.config):
            raise ValueError("AdversarialTask needs dynamics.adversarial > 0 or dynamics.adversarial_pair > 0")
        self.critics = {}
        for prefix, weight in (("", self.config.adversarial), ("pair_", self.config.adversarial_pair)):
            if weight > 0:
                critic = LatentCritic(self.config.latent_channels, self.config.critic_width,
                                      paired=prefix == "pair_", pool=self.config.critic_pool)
                opt = torch.optim.Adam(critic.parameters(), lr=self.config.critic_lr, betas=(0.0, 0.99))
                self.critics[prefix] = (critic, opt)

    def judge(self, prefix: str, fake, real, metrics: dict, **given):
        """Step the critic `prefix` once on (real, fake) (hinge loss), then return its verdict on fake as the
        model's loss, with gradient to the model only. `given`: what a paired critic sees beside the frame."""
        critic, opt = self.critics[prefix]
        critic = critic.to(real.device)
        d_real, d_fake = critic(real, **given), critic(fake.detach(), **given)
        d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        opt.zero_grad(set_to_none=True)
        d_loss.backward()
        opt.step()
        critic.requires_grad_(False)
        verdict = -critic(fake, **given).mean()
        critic.requires_grad_(True)
        metrics.update({f"{prefix}critic_loss": d_loss.detach(), f"{prefix}critic_real": d_real.mean().detach(),
                        f"{prefix}critic_fake": d_fake.mean().detach()})
        return verdict

    @staticmethod
    def head_grad_norm(model, loss) -> float:
        """The norm of loss's gradient at the model's output layer (the graph is kept)."""
        grad, = torch.autograd.grad(loss, unwrap(model).head.weight, retain_graph=True)
        return float(grad.norm())

    def scale(self, prefix: str, model, fm_norm: float | None, verdict, metrics: dict) -> float:
        """1, or with `adversarial_adaptive` the ratio of flow matching's gradient norm at the model's output
        layer (`fm_norm`, from `head_grad_norm`) to the verdict's there (a constant): the weight is then the
        verdict's share of the gradient there, whatever the critic's own scale."""
        if not self.config.adversarial_adaptive:
            return 1.0
        ratio = min(fm_norm / (self.head_grad_norm(model, verdict) + 1e-8), 1e4)
        metrics[f"{prefix}adaptive_scale"] = torch.tensor(ratio)
        return ratio

    def loss(self, model, batch):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ValueError("dynamics.adversarial trains its critics in one process: run it without torchrun")
        latents, actions = batch["latents"], batch["actions"]
        config, W, P = self.config, self.config.context_frames, prompt_length(self.config)
        if latents.shape[1] != clip_frames(config):
            raise ValueError(f"adversarial training needs clips of {clip_frames(config)} frames (the prompt of "
                             f"{P} and adversarial_frames), got {latents.shape[1]}")
        fm, metrics = flow_matching_loss(model, config, latents[:, -W:], actions[:, -W:])
        metrics["flow"] = metrics.pop("loss")  # the trainer logs the whole loss as "loss"
        loss = fm
        fm_norm = self.head_grad_norm(model, fm) if config.adversarial_adaptive else None  # once for both critics
        seed = int(torch.randint(0, 2 ** 62, ()))  # from the trainer's restored RNG: resume repeats it
        sampler = prompted(model, latents, actions, P, seed)
        if "pair_" in self.critics:
            first = judged_frame(model, sampler, actions[:, P - 1])  # from the real prompt alone
            verdict = self.judge("pair_", first, latents[:, P], metrics, before=latents[:, P - 1],
                                 action=actions[:, P - 1])
            loss = loss + config.adversarial_pair * self.scale("pair_", model, fm_norm, verdict, metrics) * verdict
        if "" in self.critics:
            play_out(model, latents, actions, P, seed, sampler=sampler)
            fake, real = judged_frame(model, sampler, actions[:, -2]), latents[:, -1]
            verdict = self.judge("", fake, real, metrics)
            loss = loss + config.adversarial * self.scale("", model, fm_norm, verdict, metrics) * verdict
            spread = lambda x: x.detach().float().std(dim=(2, 3)).mean()
            metrics.update(spread_made=spread(fake), spread_real=spread(real))
        return loss, metrics

    def save_state(self, directory) -> None:
        """Each critic's weights and Adam state into DIRECTORY/critic.safetensors (one file, written atomically)."""
        tensors = {}
        for prefix, (critic, opt) in self.critics.items():
            tensors.update({f"{prefix}critic/{k}": v for k, v in critic.state_dict().items()})
            for pid, entries in opt.state_dict()["state"].items():
                for name, value in entries.items():
                    tensors[f"{prefix}adam/{pid}/{name}"] = torch.as_tensor(value)
        write_tensors(Path(directory) / CRITIC_FILE, tensors)

    def load_state(self, directory) -> None:
        """Restore what `save_state` wrote; a checkpoint without it (from a run without these critics) is an
        error."""
        path = Path(directory) / CRITIC_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; that checkpoint was not written by adversarial training "
                                  "(set dynamics.adversarial to the run's value, or start a new out_dir)")
        tensors = read_tensors(path)
        for prefix, (critic, opt) in self.critics.items():
            weights = {k[len(prefix) + 7:]: v for k, v in tensors.items() if k.startswith(f"{prefix}critic/")}
            if not weights:
                raise CheckpointError(f"{path}: holds no {prefix}critic; the run was started with other "
                                      "adversarial weights (set adversarial / adversarial_pair to the run's values)")
            try:
                critic.load_state_dict(weights)
            except RuntimeError as e:
                raise CheckpointError(f"{path}: the {prefix}critic does not fit this config (critic_width?): {e}") \
                    from None
            state = opt.state_dict()
            state["state"] = {}
            for key, value in tensors.items():
                if key.startswith(f"{prefix}adam/"):
                    _, pid, name = key[len(prefix):].split("/", 2)
                    state["state"].setdefault(int(pid), {})[name] = value
            opt.load_state_dict(state)

    def grow_from(self, model, directory, name: str) -> None:
        self.base.grow_from(model, directory, name)

    def save_samples(self, model, batch, path) -> None:
        W = self.config.context_frames
        self.base.save_samples(model, {k: batch[k][:, -W:] for k in ("latents", "actions")}, path)
