"""Adversarial post-training (worldsim/models/adversarial.py): the frame it judges is the sampler's, the critic
learns and is checkpointed, and a resumed run equals an uninterrupted one."""
import dataclasses

import pytest
import torch

from worldsim.models import adversarial
from worldsim.models.dynamics import DynamicsModel, shift_actions
from worldsim.models.dynamics_config import sample_levels

from test_dynamics import inputs, moving_pattern_cache, randomized, tiny_config


def small_config(**changes):
    values = dict(latent_channels=4, latent_height=8, latent_width=8, n_layer=2, context_frames=6, context_noise=0.0,
                  sample_steps=2, adversarial=0.1, adversarial_frames=5, critic_width=8)
    return tiny_config(**{**values, **changes})


def test_judged_frame_is_the_samplers_next_frame_and_a_whole_clip_recomputation():
    """After play_out, judged_frame makes what the sampler's own step makes from the same noise, and what Euler
    steps of a cache-free forward over the whole clip make (past the window's wrap); with grad on, the last
    step is in the graph and the value is the same."""
    from worldsim.sampling import denoise_chunk
    config = small_config(sample_steps=3)
    model = randomized(DynamicsModel(config), seed=1)
    latents, actions, _ = inputs(config, B=2, T=10, seed=2)  # 8 made frames: the 5-frame cache wraps
    z = torch.randn(latents[:, 0].shape, generator=torch.Generator().manual_seed(3))
    clip, sampler = adversarial.play_out(model, latents, actions, prompt=3, seed=0)
    assert clip.shape[1] == 9 and torch.equal(clip[:, :3], latents[:, :3])
    assert float((clip[:, 3] - latents[:, 3]).abs().max()) > 0.1  # made, not the data
    with torch.no_grad():
        got = adversarial.judged_frame(model, sampler, actions[:, -2], z)
        own = denoise_chunk(model, sampler.caches, actions[:, -2:-1], sampler.frame, z[:, None], 3, sampler.last)
        x = torch.cat([clip, z[:, None]], dim=1)
        acts, ts, want = shift_actions(actions), sample_levels(3), z
        for t, t_next in zip(ts[:-1], ts[1:]):
            x[:, -1] = want
            levels = torch.zeros(2, 10)
            levels[:, -1] = t
            want = want + (t_next - t) * model(x, acts, levels)[:, -1]
    torch.testing.assert_close(got, own[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    made = adversarial.judged_frame(model, sampler, actions[:, -2], z)
    made.sum().backward()
    assert model.head.weight.grad.abs().sum() > 0
    torch.testing.assert_close(made.detach(), got, rtol=0, atol=0)


def test_play_out_is_the_training_samples_rollout():
    """The frames after the prompt are the sampler's, as the training samples make them."""
    from worldsim.models.train_dynamics import rollout
    config = small_config()
    model = randomized(DynamicsModel(config), seed=4).eval()
    latents, actions, _ = inputs(config, B=2, T=8, seed=5)
    clip, _ = adversarial.play_out(model, latents, actions, prompt=3, seed=0)
    torch.testing.assert_close(clip[:, 3:], rollout(model, latents[:, :7], actions[:, :7], 3), rtol=1e-5, atol=1e-5)  # fused commit: rounding


def test_first_judged_frame_is_the_samplers_first_frame():
    """Straight after the prompt, judged_frame makes the sampler's first frame from the same noise: the frame the
    paired critic judges is made from real context alone."""
    from worldsim.sampling import denoise_chunk
    config = small_config()
    model = randomized(DynamicsModel(config), seed=1)
    latents, actions, _ = inputs(config, B=2, T=6, seed=2)
    z = torch.randn(latents[:, 0].shape, generator=torch.Generator().manual_seed(3))
    sampler = adversarial.prompted(model, latents, actions, prompt=3, seed=0)
    with torch.no_grad():
        got = adversarial.judged_frame(model, sampler, actions[:, 2], z)
        own = denoise_chunk(model, sampler.caches, actions[:, 2:3], sampler.frame, z[:, None], 2, sampler.last)
    torch.testing.assert_close(got, own[:, 0], rtol=0, atol=0)
    # judging reads the caches and writes nothing: the rollout after it is the one without it
    clip, _ = adversarial.play_out(model, latents, actions, prompt=3, seed=0, sampler=sampler)
    plain, _ = adversarial.play_out(model, latents, actions, prompt=3, seed=0)
    torch.testing.assert_close(clip, plain, rtol=0, atol=0)


@pytest.mark.parametrize("weights,pool", [((0.1, 0.0), 1), ((0.0, 0.1), 1), ((0.1, 0.1), 2)])
def test_loss_steps_the_critics_and_reaches_the_model(weights, pool):
    config = small_config(adversarial=weights[0], adversarial_pair=weights[1], critic_pool=pool)
    base = __import__("worldsim.models.train_dynamics", fromlist=["DynamicsTask"]).DynamicsTask(config)
    randomized(base.model, seed=6)
    task = adversarial.AdversarialTask(base)
    want = {p for p, w in zip(("", "pair_"), weights) if w > 0}
    assert set(task.critics) == want
    latents, actions, _ = inputs(config, B=3, T=adversarial.clip_frames(config), seed=7)
    before = {p: {k: v.clone() for k, v in c.state_dict().items()} for p, (c, _) in task.critics.items()}
    loss, metrics = task.loss(base.model, {"latents": latents, "actions": actions})
    assert torch.isfinite(loss)
    loss.backward()
    assert base.model.head.weight.grad.abs().sum() > 0
    for p, (critic, _) in task.critics.items():
        assert any(not torch.equal(before[p][k], v) for k, v in critic.state_dict().items()), p
        assert {f"{p}critic_loss", f"{p}critic_real", f"{p}critic_fake"} <= set(metrics)
    assert "flow" in metrics and (("spread_made" in metrics) == ("" in want))
    with pytest.raises(ValueError, match="clips of 8 frames"):
        task.loss(base.model, {"latents": latents[:, :6], "actions": actions[:, :6]})


def test_adversarial_run_resumes_exactly_with_its_critic(tmp_path):
    """Killed after 2 of 4 steps and resumed, the run ends with the weights and critic of an uninterrupted one."""
    from worldsim.models.train_dynamics import train_dynamics
    from worldsim.training import TrainConfig
    from worldsim.training.checkpoint import CheckpointError, read_tensors
    cache = moving_pattern_cache(tmp_path / "cache")
    config = small_config(adversarial_pair=0.1)
    run = lambda out, **kw: TrainConfig(out_dir=str(tmp_path / out), data=str(cache), steps=4, batch_size=2,
                                        lr=1e-3, warmup_steps=1, ckpt_every=2, sample_every=0, seed=0, **kw)
    def fresh(*args, **kw):  # each run starts as a new process would: the same initial weights
        torch.manual_seed(0)
        train_dynamics(*args, progress=False, **kw)
    fresh(config, run("whole"))
    fresh(config, run("split"), stop_after=2)
    torch.manual_seed(1)  # the resumed half restores everything it needs
    train_dynamics(config, run("split"), progress=False)
    last = lambda out: sorted((tmp_path / out / "checkpoints").glob("step_*"))[-1]
    for name in ("model.safetensors", adversarial.CRITIC_FILE):
        a, b = read_tensors(last("whole") / name), read_tensors(last("split") / name)
        assert a.keys() == b.keys() and len(a) > 0
        assert name != adversarial.CRITIC_FILE or {k.split("/")[0] for k in a} == {"critic", "adam", "pair_critic",
                                                                                    "pair_adam"}
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}: {k}")
    # resuming a run that has no critic is a clear error
    plain = dataclasses.replace(config, adversarial=0.0, adversarial_pair=0.0)
    train_dynamics(plain, run("plain"), progress=False, stop_after=2)
    with pytest.raises(CheckpointError, match="critic.safetensors: missing"):
        train_dynamics(config, run("plain"), progress=False)
    # nor one whose critics are not this config's
    train_dynamics(dataclasses.replace(config, adversarial_pair=0.0), run("one"), progress=False, stop_after=2)
    with pytest.raises(CheckpointError, match="holds no pair_critic"):
        train_dynamics(config, run("one"), progress=False)


def test_bad_adversarial_settings_name_the_field():
    for field, value in (("adversarial", -0.1), ("adversarial_pair", -1.0), ("adversarial_frames", 0),
                         ("critic_lr", 0.0), ("critic_width", 0), ("critic_pool", 0), ("critic_pool", 3)):
        with pytest.raises(ValueError, match=field):
            small_config(**{field: value})
    with pytest.raises(ValueError, match="adversarial rolls out one frame at a time"):
        small_config(chunk_frames=2)
    with pytest.raises(ValueError, match="view_memory=false to train"):
        small_config(view_memory=True)
    with pytest.raises(ValueError, match="adversarial rolls out one frame at a time"):
        small_config(adversarial=0.0, adversarial_pair=0.1, chunk_frames=2)
    critic = adversarial.LatentCritic(4, 8, paired=True)
    with pytest.raises(ValueError, match="paired critic"):
        critic(torch.zeros(1, 4, 8, 8))


def test_pooled_critic_sees_only_the_coarse_frame():
    """With pool 2, two frames with the same 2 x 2 means get the same verdict: texture below that scale is
    invisible to it, so it cannot ask the model to invent any."""
    torch.manual_seed(0)
    critic = adversarial.LatentCritic(4, 8, pool=2).eval()  # eval: no power iteration between the calls
    frame = torch.randn(3, 4, 8, 8)
    texture = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4)  # zero mean in every 2 x 2 cell
    torch.testing.assert_close(critic(frame + texture), critic(frame), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(critic(frame + 0.5), critic(frame))


def test_adaptive_weight_makes_the_verdict_a_share_of_the_output_layers_gradient():
    """With adversarial_adaptive the verdict's gradient at the output layer, times its scale, has the norm of
    flow matching's there, however large the critic's own scale; the loss path logs the scale."""
    config = small_config(adversarial_adaptive=True, adversarial_pair=0.1)
    base = __import__("worldsim.models.train_dynamics", fromlist=["DynamicsTask"]).DynamicsTask(config)
    model = randomized(base.model, seed=6)
    task = adversarial.AdversarialTask(base)
    latents, actions, _ = inputs(config, B=2, T=adversarial.clip_frames(config), seed=8)
    out = model(latents[:, :4], shift_actions(actions[:, :4]), torch.full((2, 4), 0.5))
    fm, verdict = out.square().mean(), 1000.0 * out[:, -1].sum()
    head = model.head.weight
    scale = task.scale("", model, task.head_grad_norm(model, fm), verdict, {})
    g_fm, = torch.autograd.grad(fm, head, retain_graph=True)
    g_adv, = torch.autograd.grad(scale * verdict, head, retain_graph=True)
    torch.testing.assert_close(g_adv.norm(), g_fm.norm(), rtol=1e-4, atol=0)
    assert adversarial.AdversarialTask(type(base)(small_config())).scale("", model, None, verdict, {}) == 1.0
    loss, metrics = task.loss(model, {"latents": latents, "actions": actions})
    loss.backward()
    assert float(metrics["adaptive_scale"]) > 0 and float(metrics["pair_adaptive_scale"]) > 0
