"""`python run_world.py ...` run in the test's own process: hydra composes the config from the same overrides and
run_world's dispatch runs it, so a test of what a command does or refuses skips starting a Python that imports
torch (seconds each). A few tests still run the real command line."""
import importlib.util
import os
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_world", ROOT / "run_world.py")
run_world_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_world_module)


def run_world(*overrides: str) -> str | None:
    """Run run_world.py with these overrides from the repository root: None when it succeeds, else the message it
    exits with (an exception other than its clean exit propagates, as a traceback would)."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        run_world_module.dispatch(cfg)
    except SystemExit as e:
        return None if e.code in (None, 0) else str(e.code)
    finally:
        os.chdir(cwd)
    return None
