"""WorldSim's one entry point: `python run_world.py [mode=play|rollout|bench|...] [world=auto|engine|model] [key=value ...]`."""
import sys

import hydra
from omegaconf import DictConfig, OmegaConf


def engine_config(cfg: DictConfig):
    from worldsim.engine.env import EngineConfig
    return EngineConfig(**OmegaConf.to_container(cfg.engine, resolve=True))


WORLD_KINDS = ("auto", "engine", "model")


def world_kind(cfg: DictConfig) -> str:
    """engine | model. world=auto (the default) plays the world shipped under assets/ (or checkpoint=PATH),
    else the engine, with a one-line note."""
    kind = cfg.world.kind
    if kind not in WORLD_KINDS:
        raise ValueError(f"unknown world kind {kind!r}; known: {', '.join(WORLD_KINDS)}")
    if kind != "auto":
        return kind
    if cfg.checkpoint:
        return "model"
    from worldsim.envs import shipped_world
    shipped = shipped_world()
    if shipped is None:
        print("note: no world model ships in assets/ yet, so this is the engine "
              "(world=model checkpoint=PATH plays a trained model)")
        return "engine"
    cfg.checkpoint = str(shipped)
    return "model"


def model_config(cfg: DictConfig, **changes):
    from worldsim.envs.world_model import WorldModelConfig
    values = {k: v for k, v in to_dict(cfg.world).items() if k != "kind"}
    return WorldModelConfig(**{**values, "checkpoint": cfg.checkpoint, **changes})


def make_env(cfg: DictConfig, kind: str | None = None):
    """The environment the `world` config names."""
    kind = kind or world_kind(cfg)
    if kind == "engine":
        from worldsim.engine.env import VoxelEnv
        return VoxelEnv(engine_config(cfg))
    from worldsim.envs.world_model import WorldModelEnv
    return WorldModelEnv(model_config(cfg), engine_config(cfg))


def make_vector_env(cfg: DictConfig, kind: str, num_envs: int):
    """`num_envs` worlds of the kind `world` names, stepped as one gymnasium VectorEnv."""
    if kind == "engine":
        from worldsim.engine.env import VoxelVectorEnv
        return VoxelVectorEnv(num_envs, engine_config(cfg))
    from worldsim.envs.world_model import WorldModelVectorEnv
    return WorldModelVectorEnv(num_envs, model_config(cfg), engine_config(cfg))


def plain_warnings() -> None:
    """Warnings as one line each ('warning: ...'), without the source line."""
    import warnings
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def run_play(cfg: DictConfig) -> None:
    from worldsim.play.game import NoDisplayError, PlayConfig, check_display, play
    plain_warnings()
    play_config = PlayConfig(**to_dict(cfg.play))
    kind = world_kind(cfg)
    try:
        check_display()
    except NoDisplayError as e:
        print(f"{e}: playing a scripted {play_config.headless_seconds:g}-second walk headless instead",
              file=sys.stderr)
        return run_headless(cfg, kind, play_config)
    ticks = play(lambda: make_env(cfg, kind), play_config, seed=cfg.seed)  # made where its frames will be
    print(f"played {ticks} ticks")


def run_headless(cfg: DictConfig, kind: str, play_config) -> None:
    from worldsim.play.headless import headless_walk
    env = make_env(cfg, kind)
    result = headless_walk(env, play_config.headless_seconds, play_config.fps, play_config.record_dir,
                           seed=cfg.seed, source=kind)
    print(f"wrote {result['path']}: {result['frames']} frames ({result['frames'] / play_config.fps:g} s of play) "
          f"in {result['seconds']:.1f} s, {result['fps']:.1f} frames/s with encoding, "
          f"{result['step_fps']:.1f} frames/s for the {kind} alone")


def run_rollout(cfg: DictConfig) -> None:
    from worldsim.data.policies import PolicyConfig
    from worldsim.rollout import EpisodeWriters, RolloutConfig, make_batch_policy, rollout
    plain_warnings()
    values = to_dict(cfg.rollout)
    # `policy=NAME` replaces the policy section with a name; `policy.name=NAME` keeps its settings
    named = isinstance(cfg.policy, str)
    policy_config = PolicyConfig() if named else PolicyConfig(**to_dict(cfg.policy))
    values["policy"] = values.get("policy") or (cfg.policy if named else policy_config.name)
    config = RolloutConfig(**values)
    policy = make_batch_policy(config.policy, config.num_envs, config.seed, policy_config)  # a bad path fails first
    kind = world_kind(cfg)
    env = make_vector_env(cfg, kind, config.num_envs)
    from worldsim.data.interchange import env_options
    options = {**env_options(env), "world": kind, "policy": config.policy,
               **({"checkpoint": cfg.checkpoint} if kind == "model" else {})}
    writers = EpisodeWriters(config.out_dir, kind, env.metadata["render_fps"], options)
    result = rollout(env, policy, config.steps, seed=config.seed, writers=writers, progress=config.progress)
    print(f"{result['frames']} frames from {config.num_envs} {kind} worlds in {result['seconds']:.1f} s "
          f"({result['fps']:.1f} frames/s); {len(result['trajectories'])} trajectories in {config.out_dir}")


def run_bench(cfg: DictConfig) -> None:
    from worldsim.bench import BenchConfig, bench_engine
    bench_engine(engine_config(cfg), BenchConfig(**OmegaConf.to_container(cfg.bench, resolve=True)), seed=cfg.seed)


def run_generate(cfg: DictConfig) -> None:
    from worldsim.data.generate import GenerateConfig, generate
    from worldsim.data.policies import PolicyConfig
    generate_config = GenerateConfig(**OmegaConf.to_container(cfg.generate, resolve=True))
    policy_config = PolicyConfig(**OmegaConf.to_container(cfg.policy, resolve=True))
    generate(generate_config, engine_config(cfg), policy_config)


def run_convert(cfg: DictConfig) -> None:
    from worldsim.data.convert import convert
    if not cfg.convert.src or not cfg.convert.dst:
        raise ValueError("mode=convert needs convert.src=PATH and convert.dst=PATH")
    src = cfg.convert.src
    convert(src if isinstance(src, str) else [str(s) for s in src], cfg.convert.dst, overwrite=cfg.convert.overwrite)


def to_dict(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def run_train_autoencoder(cfg: DictConfig) -> None:
    from worldsim.models.autoencoder import AutoencoderConfig
    from worldsim.models.train_autoencoder import train_autoencoder
    from worldsim.training import TrainConfig
    train_autoencoder(AutoencoderConfig(**to_dict(cfg.autoencoder)), TrainConfig(**to_dict(cfg.train)))


def run_encode(cfg: DictConfig) -> None:
    from worldsim.models.train_autoencoder import encode_cache
    encode_cache(cfg.encode.checkpoint, cfg.encode.cache, batch_size=cfg.encode.batch_size)


def run_tune_decoder(cfg: DictConfig) -> None:
    from worldsim.models.train_autoencoder import DecoderTuneConfig, tune_decoder
    from worldsim.training import TrainConfig
    tune_decoder(DecoderTuneConfig(**to_dict(cfg.tune_decoder)), TrainConfig(**to_dict(cfg.train)))


def run_eval(cfg: DictConfig) -> None:
    from pathlib import Path

    from worldsim.data.policies import PolicyConfig
    from worldsim.eval import EvalConfig, run_eval as evaluate_world
    eval_config = to_dict(cfg.eval)
    world_dir = Path(cfg.checkpoint) if cfg.checkpoint else None
    if world_dir is None and eval_config["world"] == "model" and not eval_config["checkpoint"]:
        from worldsim.envs import shipped_world
        world_dir = shipped_world()  # nothing named: the world that python run_world.py plays
    if world_dir is not None and (world_dir / "dynamics").is_dir():  # a world directory: dynamics/ + autoencoder/
        eval_config["checkpoint"] = eval_config["checkpoint"] or str(world_dir / "dynamics")
        eval_config["autoencoder"] = eval_config["autoencoder"] or str(world_dir / "autoencoder")
    elif world_dir is not None:
        eval_config["checkpoint"] = eval_config["checkpoint"] or str(world_dir)
    evaluate_world(EvalConfig(**eval_config), engine_config(cfg), PolicyConfig(**to_dict(cfg.policy)))


def run_train_idm(cfg: DictConfig) -> None:
    from worldsim.data.policies import PolicyConfig
    from worldsim.eval.idm import IDMConfig, IDMTrainConfig, print_idm_table, train_idm
    _, report = train_idm(IDMConfig(**to_dict(cfg.idm.model)), IDMTrainConfig(**to_dict(cfg.idm.train)),
                          engine_config(cfg), PolicyConfig(**to_dict(cfg.policy)))
    print_idm_table(report["holdout"], title=f"IDM on held-out worlds, saved to {cfg.idm.train.out_dir}")


def run_train_dynamics(cfg: DictConfig) -> None:
    from worldsim.models.dynamics import DynamicsConfig
    from worldsim.models.train_dynamics import train_dynamics
    from worldsim.training import TrainConfig
    train_dynamics(DynamicsConfig(**to_dict(cfg.dynamics)), TrainConfig(**to_dict(cfg.train)))


def run_ship(cfg: DictConfig) -> None:
    from worldsim.envs.ship import ship_config_from, ship_world
    ship_world(ship_config_from(to_dict(cfg.ship)))


MODES = {"play": run_play, "bench": run_bench, "generate": run_generate, "convert": run_convert,
         "train_autoencoder": run_train_autoencoder, "encode": run_encode, "tune_decoder": run_tune_decoder,
         "train_dynamics": run_train_dynamics,
         "rollout": run_rollout, "eval": run_eval, "train_idm": run_train_idm, "ship": run_ship}


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from worldsim.play.game import NoDisplayError
    if cfg.mode not in MODES:
        sys.exit(f"error: unknown mode {cfg.mode!r}; known modes: {', '.join(MODES)}")
    try:
        MODES[cfg.mode](cfg)
    except NoDisplayError as e:
        sys.exit(f"error: {e}. Run it on a machine with a screen (or set SDL_VIDEODRIVER=dummy for a blind test).")
    except (ValueError, TypeError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
