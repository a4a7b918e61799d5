"""WorldSim's one entry point: `python run_world.py [mode=play|bench|generate|convert] [world=engine] [key=value ...]`."""
import sys

import hydra
from omegaconf import DictConfig, OmegaConf


def engine_config(cfg: DictConfig):
    from worldsim.engine.env import EngineConfig
    return EngineConfig(**OmegaConf.to_container(cfg.engine, resolve=True))


def make_env(cfg: DictConfig):
    """The environment the `world` config names."""
    if cfg.world.kind == "engine":
        from worldsim.engine.env import VoxelEnv
        return VoxelEnv(engine_config(cfg))
    raise ValueError(f"unknown world kind {cfg.world.kind!r}; known: engine")


def run_play(cfg: DictConfig) -> None:
    from worldsim.play.game import PlayConfig, check_display, play
    play_config = PlayConfig(**OmegaConf.to_container(cfg.play, resolve=True))
    check_display()
    env = make_env(cfg)
    ticks = play(env, play_config, seed=cfg.seed)
    print(f"played {ticks} ticks")


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
    convert(cfg.convert.src, cfg.convert.dst, overwrite=cfg.convert.overwrite)


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


def run_train_dynamics(cfg: DictConfig) -> None:
    from worldsim.models.dynamics import DynamicsConfig
    from worldsim.models.train_dynamics import train_dynamics
    from worldsim.training import TrainConfig
    train_dynamics(DynamicsConfig(**to_dict(cfg.dynamics)), TrainConfig(**to_dict(cfg.train)))


MODES = {"play": run_play, "bench": run_bench, "generate": run_generate, "convert": run_convert,
         "train_autoencoder": run_train_autoencoder, "encode": run_encode, "train_dynamics": run_train_dynamics}


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
