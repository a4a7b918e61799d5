"""The timed recipe (python -m worldsim.recipe): every stage runs the project's own command at toy sizes, and
the packed parts unpack into runs that load as a world."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from worldsim.envs.world_model import load_world

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_dry_recipe_runs_every_stage_and_packs_loadable_runs(tmp_path):
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # keep what it adds
    subprocess.run([sys.executable, "-m", "worldsim.recipe", "--dry", "--minutes", "8", "--out", "packed",
                    "--part-mib", "1"], cwd=tmp_path, check=True, env={**os.environ, "PYTHONPATH": path})
    parts = sorted((tmp_path / "packed").glob("pack.part*"), key=lambda p: int(p.name[len("pack.part"):]))
    assert len(parts) > 1 and all(p.stat().st_size <= 2 ** 20 for p in parts)
    (tmp_path / "joined.tgz").write_bytes(b"".join(p.read_bytes() for p in parts))
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tmp_path / "joined.tgz") as tar:
        tar.extractall(unpacked, filter="data")
    status = json.loads((unpacked / "results" / "status.json").read_text())["stages"]
    assert set(status) == {"generate", "autoencoder", "encode", "dynamics"}
    assert all(s["rc"] == 0 for s in status.values()), status
    for copy, original in json.loads((unpacked / "results" / "copies.json").read_text()).items():
        (unpacked / copy).write_bytes((unpacked / original).read_bytes())
    assert json.loads((unpacked / "results" / "data_stats.json").read_text())["frames_made"] == 2 * 48
    dynamics, autoencoder = load_world(unpacked / "runs" / "dyn", unpacked / "runs" / "ae")
    assert autoencoder.config.height == 128 and dynamics.config.n_layer == 4
    assert (unpacked / "runs" / "dyn" / "checkpoints").is_dir()  # the latest checkpoint, to resume elsewhere
