"""Inverse dynamics: a small CNN that reads a frame pair (t, t + 1) and names the action a_t that led between them.

The harness uses it to ask whether generated frames follow the actions they were given: its accuracy on
generated pairs divided by its accuracy on real pairs, per action group. It is trained here on engine frames
driven by the exploration policy (training worlds are seeds below the evaluation's held-out ones).

Heads (classes): forward_back (none, forward, back), left_right (none, left, right), pitch and yaw (five bins of
degrees per tick: fast negative, slow negative, still, slow positive, fast positive; positive pitch looks down),
jump, attack, use (off, on), hotbar (none, 1..9). Groups: move, camera, jump, attack_use, hotbar.
"""
import argparse
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.progress import track

from worldsim.data.policies import PolicyConfig, make_policy
from worldsim.engine.env import EngineConfig, VoxelEnv
from worldsim.training.checkpoint import load_model, save_checkpoint

# Camera bins (degrees per tick): the exploration policy turns at about 2.5°/tick; "still" is under half a degree.
CAMERA_BIN_EDGES = (-3.0, -0.5, 0.5, 3.0)
STILL_BIN = len(CAMERA_BIN_EDGES) // 2  # the camera bin around zero
HEADS = {"forward_back": 3, "left_right": 3, "pitch": len(CAMERA_BIN_EDGES) + 1, "yaw": len(CAMERA_BIN_EDGES) + 1,
         "jump": 2, "attack": 2, "use": 2, "hotbar": 10}
GROUPS = {"move": ("forward_back", "left_right"), "camera": ("pitch", "yaw"), "jump": ("jump",),
          "attack_use": ("attack", "use"), "hotbar": ("hotbar",)}


def action_labels(action: dict) -> dict[str, int]:
    """The class of each head for one MineRL action dict (missing keys count as not pressed)."""
    pressed = lambda key: int(action.get(key, 0)) == 1
    camera = np.asarray(action.get("camera", (0.0, 0.0)), dtype=np.float64)
    bins = np.searchsorted(CAMERA_BIN_EDGES, camera, side="right")
    hotbar = next((i for i in range(1, 10) if pressed(f"hotbar.{i}")), 0)
    return {"forward_back": 1 if pressed("forward") and not pressed("back") else 2 if pressed("back") and not pressed("forward") else 0,
            "left_right": 1 if pressed("left") and not pressed("right") else 2 if pressed("right") and not pressed("left") else 0,
            "pitch": int(bins[0]), "yaw": int(bins[1]), "jump": int(pressed("jump")), "attack": int(pressed("attack")),
            "use": int(pressed("use")), "hotbar": hotbar}


def label_array(actions: list[dict]) -> np.ndarray:
    """(N, len(HEADS)) int64 labels of a list of actions, heads in HEADS order."""
    return np.array([[action_labels(a)[h] for h in HEADS] for a in actions], dtype=np.int64).reshape(-1, len(HEADS))


# ---------------------------------------------------------------------------------------------- the model
@dataclass
class IDMConfig:
    height: int = 128
    width: int = 128
    input_size: int = 64             # both frames are area-resized to this square before the convolutions
    channels: tuple = (32, 64, 128, 128)  # one stride-2 convolution per entry
    hidden: int = 256

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if self.input_size % 2 ** len(self.channels):
            raise ValueError(f"idm.input_size {self.input_size} must be a multiple of 2^{len(self.channels)}")
        if any(c % 8 for c in self.channels):
            raise ValueError(f"idm.channels must be multiples of 8 (GroupNorm), got {self.channels}")


class InverseDynamics(nn.Module):
    """(frame_t, frame_t+1) uint8 (B, H, W, 3) each → logits per head, {name: (B, classes)}."""

    def __init__(self, config: IDMConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 9  # frame t, frame t + 1 and their difference, which carries most of the motion
        for c_out in config.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        side = config.input_size // 2 ** len(config.channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, config.hidden), nn.SiLU(),
                                  nn.Linear(config.hidden, sum(HEADS.values())))

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        if before.shape != after.shape or tuple(before.shape[1:]) != (c.height, c.width, 3):
            raise ValueError(f"expected two uint8 batches (B, {c.height}, {c.width}, 3), got {tuple(before.shape)} "
                             f"and {tuple(after.shape)}")
        x = torch.cat([before, after], dim=0).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (2B, 3, H, W)
        x = F.interpolate(x, size=(c.input_size, c.input_size), mode="area")
        a, b = x.chunk(2)
        logits = self.head(self.convs(torch.cat([a, b, b - a], dim=1)))  # (B, sum of classes)
        return dict(zip(HEADS, logits.split(list(HEADS.values()), dim=1)))

    @torch.no_grad()
    def predict(self, before: np.ndarray, after: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, len(HEADS)) int64 predicted classes for uint8 frame pairs (N, H, W, 3)."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(before), batch_size):
            logits = self(torch.from_numpy(np.ascontiguousarray(before[i:i + batch_size])).to(device),
                          torch.from_numpy(np.ascontiguousarray(after[i:i + batch_size])).to(device))
            out.append(torch.stack([logits[h].argmax(dim=1) for h in HEADS], dim=1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(HEADS)), np.int64)


def load_idm(directory, device="cpu") -> InverseDynamics:
    """The IDM saved by train_idm in DIR (idm.safetensors + idm.json), loaded strictly."""
    return load_model(directory, InverseDynamics, IDMConfig, name="idm", device=device).eval()


# ---------------------------------------------------------------------------------------------- scoring
def accuracy_report(predicted: np.ndarray, labels: np.ndarray) -> dict:
    """Per head: accuracy, balanced accuracy (mean recall over the classes present), majority-class rate, count
    (camera heads also the direction accuracy: the side of the turn right, when there was a turn); per group: the mean accuracy and balanced accuracy of its heads. Nulls when there is nothing to score."""
    heads = {}
    for j, name in enumerate(HEADS):
        p, y = predicted[:, j], labels[:, j]
        if len(y) == 0:
            heads[name] = {"accuracy": None, "balanced_accuracy": None, "majority": None, "count": 0,
                           **({"direction_accuracy": None} if name in GROUPS["camera"] else {})}
            continue
        recalls = [float((p[y == k] == k).mean()) for k in np.unique(y)]
        heads[name] = {"accuracy": float((p == y).mean()), "balanced_accuracy": float(np.mean(recalls)),
                       "majority": float(np.bincount(y).max() / len(y)), "count": int(len(y))}
        if name in GROUPS["camera"]:  # the turn's direction, over the pairs where the camera did turn
            turned = y != STILL_BIN
            same_side = np.sign(p[turned] - STILL_BIN) == np.sign(y[turned] - STILL_BIN)
            heads[name]["direction_accuracy"] = float(same_side.mean()) if turned.any() else None
    groups = {}
    for group, members in GROUPS.items():
        values = {key: [heads[h][key] for h in members] for key in ("accuracy", "balanced_accuracy", "majority")}
        groups[group] = {key: None if None in v else float(np.mean(v)) for key, v in values.items()}
    return {"heads": heads, "groups": groups}


class PairScorer:
    """Collects frame pairs with their actions and scores the IDM on them in batches."""

    def __init__(self, idm: InverseDynamics, batch_size: int = 128):
        self.idm, self.batch_size = idm, batch_size
        self._before, self._after, self._labels = [], [], []
        self.predicted, self.labels = [], []

    def add(self, before: np.ndarray, after: np.ndarray, action: dict) -> None:
        self._before.append(before)
        self._after.append(after)
        self._labels.append(action_labels(action))
        if len(self._before) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if self._before:
            self.predicted.append(self.idm.predict(np.stack(self._before), np.stack(self._after)))
            self.labels.append(np.array([[row[h] for h in HEADS] for row in self._labels], np.int64))
            self._before, self._after, self._labels = [], [], []

    def report(self) -> dict:
        self._flush()
        empty = np.zeros((0, len(HEADS)), np.int64)
        return accuracy_report(np.concatenate(self.predicted or [empty]), np.concatenate(self.labels or [empty]))


# ---------------------------------------------------------------------------------------------- data and training
@dataclass
class IDMTrainConfig:
    out_dir: str = "runs/idm"
    first_seed: int = 0            # training worlds: first_seed .. first_seed + episodes - 1
    episodes: int = 16
    frames_per_episode: int = 400
    warmup_frames: int = 20        # policy ticks before recording, so episodes do not all start at spawn
    holdout_seed: int = 10_000     # held-out worlds for the accuracy printed and saved with the checkpoint
    holdout_episodes: int = 4
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


def record_episodes(engine_config: EngineConfig, policy_config: PolicyConfig, seeds, frames: int,
                    warmup: int = 0, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Engine episodes driven by the policy: frames uint8 (E, frames + 1, H, W, 3) and labels (E, frames, heads)."""
    env = VoxelEnv(engine_config)
    all_frames, all_labels = [], []
    for seed in track(list(seeds), description="recording", disable=not progress):
        policy = make_policy(policy_config.name, policy_config, seed=int(seed))
        obs, info = env.reset(seed=int(seed))
        for _ in range(warmup):
            obs, _, _, _, info = env.step(policy.act(obs, info))
        episode, taken = [obs], []
        for _ in range(frames):
            action = policy.act(obs, info)
            obs, _, _, _, info = env.step(action)
            episode.append(obs)
            taken.append(action)
        all_frames.append(np.stack(episode))
        all_labels.append(label_array(taken))
    return np.stack(all_frames), np.stack(all_labels)


def score_episodes(idm: InverseDynamics, frames: np.ndarray, labels: np.ndarray) -> dict:
    """accuracy_report of the IDM on every consecutive pair of recorded episodes."""
    predicted = np.concatenate([idm.predict(ep[:-1], ep[1:]) for ep in frames])
    return accuracy_report(predicted, labels.reshape(-1, len(HEADS)))


def train_idm(config: IDMConfig, train: IDMTrainConfig, engine_config: EngineConfig,
              policy_config: PolicyConfig, progress: bool = True) -> tuple[InverseDynamics, dict]:
    """Record training episodes, fit the IDM, score it on held-out worlds, save it to train.out_dir."""
    if (config.height, config.width) != (engine_config.height, engine_config.width):
        raise ValueError(f"idm frames {config.height}×{config.width} differ from the engine's "
                         f"{engine_config.height}×{engine_config.width}")
    torch.manual_seed(train.seed)
    seeds = range(train.first_seed, train.first_seed + train.episodes)
    frames, labels = record_episodes(engine_config, policy_config, seeds, train.frames_per_episode,
                                     train.warmup_frames, progress)
    model = InverseDynamics(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, train.lr, total_steps=train.steps, pct_start=0.1)
    rng = np.random.default_rng(train.seed)
    E, T = labels.shape[:2]
    start = time.perf_counter()
    model.train()
    for _ in track(range(train.steps), description="training IDM", disable=not progress):
        e, t = rng.integers(E, size=train.batch_size), rng.integers(T, size=train.batch_size)
        logits = model(torch.from_numpy(frames[e, t]), torch.from_numpy(frames[e, t + 1]))
        y = torch.from_numpy(labels[e, t])
        loss = sum(F.cross_entropy(logits[h], y[:, j]) for j, h in enumerate(HEADS))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    train_seconds = time.perf_counter() - start
    holdout = range(train.holdout_seed, train.holdout_seed + train.holdout_episodes)
    test_frames, test_labels = record_episodes(engine_config, policy_config, holdout, train.frames_per_episode,
                                               train.warmup_frames)
    report = {"holdout": score_episodes(model.eval(), test_frames, test_labels), "train_seconds": train_seconds,
              "train_pairs": int(E * T), "final_loss": float(loss.item()), "train": dataclasses.asdict(train)}
    save_checkpoint(train.out_dir, model, config, name="idm", extra={"report": report})
    return model, report


def main(argv=None) -> None:
    """python -m worldsim.eval.idm [--size 128] [--steps 2000] [--out runs/idm]: train and save the IDM."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--size", type=int, default=128, help="frame width and height")
    parser.add_argument("--view-distance", type=int, default=48)
    parser.add_argument("--steps", type=int, default=IDMTrainConfig.steps)
    parser.add_argument("--episodes", type=int, default=IDMTrainConfig.episodes)
    parser.add_argument("--frames", type=int, default=IDMTrainConfig.frames_per_episode)
    parser.add_argument("--input-size", type=int, default=IDMConfig.input_size)
    parser.add_argument("--out", default=IDMTrainConfig.out_dir)
    args = parser.parse_args(argv)
    engine = EngineConfig(width=args.size, height=args.size, view_distance=args.view_distance)
    config = IDMConfig(height=args.size, width=args.size, input_size=min(args.input_size, args.size))
    train = IDMTrainConfig(out_dir=args.out, steps=args.steps, episodes=args.episodes, frames_per_episode=args.frames)
    _, report = train_idm(config, train, engine, PolicyConfig())
    print_idm_table(report["holdout"], title=f"IDM on held-out worlds ({report['train_seconds']:.0f} s training)")


def print_idm_table(report: dict, title: str = "IDM accuracy") -> None:
    """A rich table of accuracy, balanced accuracy and the majority-class rate per head."""
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title)
    for column in ("head", "accuracy", "balanced", "majority", "turn direction", "pairs"):
        table.add_column(column, justify="left" if column == "head" else "right")
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    for name, row in report["heads"].items():
        table.add_row(name, fmt(row["accuracy"]), fmt(row["balanced_accuracy"]), fmt(row["majority"]),
                      fmt(row.get("direction_accuracy")), str(row["count"]))
    Console().print(table)


if __name__ == "__main__":
    main()
