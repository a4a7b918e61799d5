"""Adversarial post-training of the dynamics model on its own rollouts (`dynamics.adversarial` > 0).

Flow matching teaches each Euler step the mean of what could come next; with 2 steps and a tiny model that
mean is a blur, and a long rollout feeds the blur back until the world is a haze. Here, each step, the model
plays `adversarial_frames - 1` frames from a prompt of real ones as the sampler plays them (no gradient), then
makes one more frame the same way, reading the sampler's KV cache, with gradient through its last Euler step.
A critic judges that frame against the clip's real frame at the same place. The model's loss is flow matching
on the clip's last window plus `adversarial` times the critic's hinge verdict; the critic has its own Adam, is
stepped inside the loss, and is saved with each checkpoint (`save_state`, `load_state`) so that a resumed run
goes on exactly.
"""
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from worldsim.models.dynamics import DynamicsConfig, flow_matching_loss
from worldsim.sampling import Sampler, sample_levels
from worldsim.training.checkpoint import CheckpointError, read_tensors, write_tensors
from worldsim.training.wrap import unwrap

CRITIC_FILE = "critic.safetensors"


class LatentCritic(nn.Module):
    """Logit that a latent frame (B, C, h, w) is a real one: spectrally normalised convolutions, pooled.

    It sees the frame alone. Shown the frame before it too, it would tell the model's frames from real ones by
    that earlier frame (made, so already worn), which the judged frame cannot change: the verdict would carry
    no signal back to the model."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        sn = spectral_norm
        self.body = nn.Sequential(
            sn(nn.Conv2d(channels, width, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * width, 4 * width, 3, padding=1)), nn.LeakyReLU(0.2))
        self.out = sn(nn.Linear(4 * width, 1))

    def forward(self, frame):
        return self.out(self.body(frame.float()).sum(dim=(2, 3))).squeeze(1)  # (B,)


@torch.no_grad()
def play_out(model, latents, actions, prompt: int, seed: int):
    """The sampler's rollout of the clips (B, T, ...) from their first `prompt` frames under the clips' actions
    (data order), up to frame T - 2. Returns the clip of T - 1 frames (the prompt, then the made ones) and the
    sampler, every frame committed to its caches: it is ready to make frame T - 1."""
    sampler = Sampler(unwrap(model), batch_size=latents.shape[0], seed=seed, fuse_commit=False)
    sampler.reset(latents[:, :prompt], actions[:, :prompt - 1])
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


def clip_frames(config: DynamicsConfig) -> int:
    """Length of the clips adversarial training reads: the prompt, then the frames the model makes."""
    return prompt_length(config) + config.adversarial_frames


def prompt_length(config: DynamicsConfig) -> int:
    return max(1, config.context_frames // 2)


class AdversarialTask:
    """The dynamics TrainTask (`base`, a DynamicsTask) with the critic; batches of `clip_frames` long clips."""

    def __init__(self, base):
        self.base, self.config, self.model = base, base.config, base.model
        if self.config.adversarial <= 0:
            raise ValueError("AdversarialTask needs dynamics.adversarial > 0")
        self.critic = LatentCritic(self.config.latent_channels, self.config.critic_width)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr, betas=(0.0, 0.99))

    def loss(self, model, batch):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ValueError("dynamics.adversarial trains its critic in one process: run it without torchrun")
        latents, actions = batch["latents"], batch["actions"]
        config, W = self.config, self.config.context_frames
        if latents.shape[1] != clip_frames(config):
            raise ValueError(f"adversarial training needs clips of {clip_frames(config)} frames (the prompt of "
                             f"{prompt_length(config)} and adversarial_frames), got {latents.shape[1]}")
        fm, metrics = flow_matching_loss(model, config, latents[:, -W:], actions[:, -W:])
        seed = int(torch.randint(0, 2 ** 62, ()))  # from the trainer's restored RNG: resume repeats it
        clip, sampler = play_out(model, latents, actions, prompt_length(config), seed)
        fake = judged_frame(model, sampler, actions[:, -2])
        real = latents[:, -1]
        critic = self.critic.to(latents.device)
        d_real, d_fake = critic(real), critic(fake.detach())
        d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.critic_opt.step()
        critic.requires_grad_(False)  # the model's verdict: gradient to the model only
        g_adv = -critic(fake).mean()
        critic.requires_grad_(True)
        spread = lambda x: x.detach().float().std(dim=(2, 3)).mean()
        metrics["flow"] = metrics.pop("loss")  # the trainer logs the whole loss as "loss"
        metrics.update(critic_loss=d_loss.detach(), critic_real=d_real.mean().detach(),
                       critic_fake=d_fake.mean().detach(), spread_made=spread(fake), spread_real=spread(real))
        return fm + config.adversarial * g_adv, metrics

    def save_state(self, directory) -> None:
        """The critic's weights and Adam state into DIRECTORY/critic.safetensors (one file, written atomically)."""
        tensors = {f"critic/{k}": v for k, v in self.critic.state_dict().items()}
        for pid, entries in self.critic_opt.state_dict()["state"].items():
            for name, value in entries.items():
                tensors[f"adam/{pid}/{name}"] = torch.as_tensor(value)
        write_tensors(Path(directory) / CRITIC_FILE, tensors)

    def load_state(self, directory) -> None:
        """Restore what `save_state` wrote; a checkpoint without it (from a run without the critic) is an error."""
        path = Path(directory) / CRITIC_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; that checkpoint was not written by adversarial training "
                                  "(set dynamics.adversarial to the run's value, or start a new out_dir)")
        tensors = read_tensors(path)
        critic = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("critic/")}
        try:
            self.critic.load_state_dict(critic)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: the critic does not fit this config (critic_width?): {e}") from None
        state = self.critic_opt.state_dict()
        state["state"] = {}
        for key, value in tensors.items():
            if key.startswith("adam/"):
                _, pid, name = key.split("/", 2)
                state["state"].setdefault(int(pid), {})[name] = value
        self.critic_opt.load_state_dict(state)

    def grow_from(self, model, directory, name: str) -> None:
        self.base.grow_from(model, directory, name)

    def save_samples(self, model, batch, path) -> None:
        W = self.config.context_frames
        self.base.save_samples(model, {k: batch[k][:, -W:] for k in ("latents", "actions")}, path)
