"""WorldSim's one entry point: `python run_world.py [mode=play|rollout|bench|...] [world=auto|engine|model] [key=value ...]`."""
import pathlib
import sys

import hydra
from omegaconf import DictConfig, OmegaConf


def engine_config(cfg: DictConfig):
    from worldsim.engine.env import EngineConfig
    return build(EngineConfig, cfg.engine, "engine")


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
    return build(WorldModelConfig, {**values, "checkpoint": cfg.checkpoint, **changes}, "world")


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
    play_config = build(PlayConfig, cfg.play, "play")
    kind = world_kind(cfg)
    no_display = None
    try:
        check_display()
    except NoDisplayError as e:
        no_display = e
    if no_display is not None:  # (outside the except: an error of the walk is its own, not the display's)
        print(f"{no_display}: playing a scripted {play_config.headless_seconds:g}-second walk headless instead",
              file=sys.stderr)
        return run_headless(cfg, kind, play_config)
    game = play(lambda: make_env(cfg, kind), play_config, seed=cfg.seed)  # made where its frames will be
    print(f"played {game.ticks} ticks")
    hint = game.slow_play_hint()
    if hint is not None:
        print(f"note: {hint}")


def run_headless(cfg: DictConfig, kind: str, play_config) -> None:
    from worldsim.play.headless import headless_walk
    env = make_env(cfg, kind)
    result = headless_walk(env, play_config.headless_seconds, play_config.fps, play_config.record_dir,
                           seed=cfg.seed, source=kind)
    print(f"wrote {result['path']}: {result['frames']} frames ({result['frames'] / play_config.fps:g} s of play) "
          f"in {result['seconds']:.1f} s, {result['fps']:.1f} frames/s with encoding, "
          f"{result['step_fps']:.1f} frames/s for the {kind} alone")


ROLLOUT_SHORTHANDS = ("num_envs", "steps")  # top-level keys that mode=rollout reads as rollout.<key>


def run_rollout(cfg: DictConfig) -> None:
    from worldsim.data.policies import PolicyConfig
    from worldsim.rollout import EpisodeWriters, RolloutConfig, make_batch_policy, rollout
    plain_warnings()
    values = to_dict(cfg.rollout)
    for key in ROLLOUT_SHORTHANDS:  # `num_envs=8 steps=500` as rollout.num_envs and rollout.steps
        if cfg.get(key) is not None:
            values[key] = cfg[key]
    # `policy=NAME` replaces the policy section with a name; `policy.name=NAME` keeps its settings
    named = isinstance(cfg.policy, str)
    policy_config = PolicyConfig() if named else build(PolicyConfig, cfg.policy, "policy")
    values["policy"] = values.get("policy") or (cfg.policy if named else policy_config.name)
    config = build(RolloutConfig, values, "rollout")
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
    if config.fmt == "cache":
        from rich.console import Console

        from worldsim.data.generate import build_cache
        build_cache(pathlib.Path(config.out_dir), Console())


def run_bench(cfg: DictConfig) -> None:
    from worldsim.bench import BenchConfig, bench_engine
    bench_engine(engine_config(cfg), build(BenchConfig, cfg.bench, "bench"), seed=cfg.seed)


def run_generate(cfg: DictConfig) -> None:
    from worldsim.data.generate import GenerateConfig, generate
    from worldsim.data.policies import PolicyConfig
    generate_config = build(GenerateConfig, cfg.generate, "generate")
    policy_config = build(PolicyConfig, cfg.policy, "policy")
    generate(generate_config, engine_config(cfg), policy_config)


def run_convert(cfg: DictConfig) -> None:
    from worldsim.data.convert import convert
    if not cfg.convert.src or not cfg.convert.dst:
        raise ValueError("mode=convert needs convert.src=PATH and convert.dst=PATH")
    src = cfg.convert.src
    convert(src if isinstance(src, str) else [str(s) for s in src], cfg.convert.dst, overwrite=cfg.convert.overwrite)


def to_dict(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def build(cls, values, section: str):
    """cls(**values) from the config section `section` (a node or a dict), each value checked against its field's
    type first: a value of the wrong kind from the command line (rollout.steps=two) is an error naming the key."""
    import dataclasses
    import typing
    values = to_dict(values) if isinstance(values, DictConfig) else dict(values)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name not in values or values[field.name] is None:
            continue
        value, kinds = values[field.name], set(typing.get_args(hints[field.name]) or (hints[field.name],))
        kinds.discard(type(None))
        if kinds == {bool} and not isinstance(value, bool):
            raise ValueError(f"{section}.{field.name} must be true or false, got {value!r}")
        numeric = kinds & {int, float} and not kinds & {str, bool}
        if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
            kind = "a whole number" if kinds == {int} else "a number"
            raise ValueError(f"{section}.{field.name} must be {kind}, got {value!r}")
    return cls(**values)


def run_train_autoencoder(cfg: DictConfig) -> None:
    from worldsim.models.autoencoder import AutoencoderConfig
    from worldsim.models.train_autoencoder import train_autoencoder
    from worldsim.training import TrainConfig
    train_autoencoder(build(AutoencoderConfig, cfg.autoencoder, "autoencoder"), build(TrainConfig, cfg.train, "train"))


def run_encode(cfg: DictConfig) -> None:
    from worldsim.models.train_autoencoder import encode_cache
    encode_cache(cfg.encode.checkpoint, cfg.encode.cache, batch_size=cfg.encode.batch_size)


def run_tune_decoder(cfg: DictConfig) -> None:
    from worldsim.models.train_autoencoder import DecoderTuneConfig, tune_decoder
    from worldsim.training import TrainConfig
    tune_decoder(build(DecoderTuneConfig, cfg.tune_decoder, "tune_decoder"), build(TrainConfig, cfg.train, "train"))


def eval_checkpoints(checkpoint, eval_config: dict) -> dict:
    """eval_config with eval.checkpoint and eval.autoencoder filled from a world directory: checkpoint=WORLD,
    eval.checkpoint=WORLD, or (a model evaluated with nothing named) the shipped world; a run directory given as
    checkpoint= is the dynamics run."""
    from pathlib import Path
    eval_config = dict(eval_config)
    world_dir = Path(checkpoint) if checkpoint else None
    if world_dir is not None and not world_dir.is_dir():
        raise FileNotFoundError(f"checkpoint={world_dir}: no such world directory")
    named = Path(eval_config["checkpoint"]) if eval_config["checkpoint"] else None
    if world_dir is None and named is not None and (named / "dynamics").is_dir():  # eval.checkpoint=WORLD
        world_dir, eval_config["checkpoint"] = named, None
    if world_dir is None and eval_config["world"] == "model" and not eval_config["checkpoint"]:
        from worldsim.envs import shipped_world
        world_dir = shipped_world()  # nothing named: the world that python run_world.py plays
    if world_dir is not None and (world_dir / "dynamics").is_dir():  # a world directory: dynamics/ + autoencoder/
        eval_config["checkpoint"] = eval_config["checkpoint"] or str(world_dir / "dynamics")
        eval_config["autoencoder"] = eval_config["autoencoder"] or str(world_dir / "autoencoder")
    elif world_dir is not None:
        eval_config["checkpoint"] = eval_config["checkpoint"] or str(world_dir)
    return eval_config


def run_eval(cfg: DictConfig) -> None:
    from worldsim.data.policies import PolicyConfig
    from worldsim.eval import EvalConfig, run_eval as evaluate_world
    eval_config = eval_checkpoints(cfg.checkpoint, to_dict(cfg.eval))
    evaluate_world(build(EvalConfig, eval_config, "eval"), engine_config(cfg), build(PolicyConfig, cfg.policy, "policy"))


def run_train_idm(cfg: DictConfig) -> None:
    from worldsim.data.policies import PolicyConfig
    from worldsim.eval.idm import IDMConfig, IDMTrainConfig, print_idm_table, train_idm
    _, report = train_idm(build(IDMConfig, cfg.idm.model, "idm.model"), build(IDMTrainConfig, cfg.idm.train, "idm.train"),
                          engine_config(cfg), build(PolicyConfig, cfg.policy, "policy"))
    print_idm_table(report["holdout"], title=f"IDM on held-out worlds, saved to {cfg.idm.train.out_dir}")


def run_train_dynamics(cfg: DictConfig) -> None:
    from worldsim.models.dynamics import DynamicsConfig
    from worldsim.models.train_dynamics import train_dynamics
    from worldsim.training import TrainConfig
    train_dynamics(build(DynamicsConfig, cfg.dynamics, "dynamics"), build(TrainConfig, cfg.train, "train"))


def run_ship(cfg: DictConfig) -> None:
    from worldsim.envs.ship import ship_config_from, ship_world
    ship_world(ship_config_from(to_dict(cfg.ship)))


MODES = {"play": run_play, "bench": run_bench, "generate": run_generate, "convert": run_convert,
         "train_autoencoder": run_train_autoencoder, "encode": run_encode, "tune_decoder": run_tune_decoder,
         "train_dynamics": run_train_dynamics,
         "rollout": run_rollout, "eval": run_eval, "train_idm": run_train_idm, "ship": run_ship}


def dispatch(cfg: DictConfig) -> None:
    """Run cfg.mode; bad input exits with one line naming it (the tests call this with hydra's compose)."""
    from worldsim.play.game import NoDisplayError
    if cfg.mode not in MODES:
        sys.exit(f"error: unknown mode {cfg.mode!r}; known modes: {', '.join(MODES)}")
    given = [key for key in ROLLOUT_SHORTHANDS if cfg.get(key) is not None]
    if given and cfg.mode != "rollout":
        sys.exit(f"error: {given[0]}={cfg[given[0]]} is mode=rollout's shorthand for rollout.{given[0]}; "
                 f"mode={cfg.mode} does not take it")
    try:
        MODES[cfg.mode](cfg)
    except NoDisplayError as e:
        sys.exit(f"error: {e}. Run it on a machine with a screen (or set SDL_VIDEODRIVER=dummy for a blind test).")
    except (ValueError, TypeError, OSError) as e:  # bad input: the message names it (a path, a key, a value)
        sys.exit(f"error: {e}")


main = hydra.main(config_path="configs", config_name="config", version_base="1.3")(dispatch)

if __name__ == "__main__":
    main()
