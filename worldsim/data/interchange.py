"""The interchange form of a trajectory: NAME.mp4 + NAME.jsonl + NAME-options.json, VPT-compatible.

- NAME.mp4: H.264 (PyAV/libx264), `fps` frames per second, a keyframe at least every KEYFRAME_INTERVAL
  frames so that seeking is cheap. Pixel format yuv444p by default: the engine's textures carry colour
  detail at single pixels, and 4:2:0 chroma subsampling alone costs them about 29 dB PSNR at 64×64 and
  33 dB at 128×128 however high the bitrate; 4:4:4 at CRF 6 keeps about 43 dB. Pass pix_fmt="yuv420p" for
  players that only take 4:2:0 (browsers). Width and height must be even.
- NAME.jsonl: one line per frame t with the action a_t taken while seeing frame t and the env info at
  frame t (the layout and the field mapping are in worldsim.data.vpt).
- NAME-options.json: resolution [width, height], fov, view_distance, fps, source, seed, frames, complete,
  versions {worldsim, format}, and whatever else the writer was given.

A writer is atomic (generation: it writes NAME.partial.* and renames at close, so a killed run leaves only
`.partial` files, which list_trajectories skips and cleanup_partial removes) or not (recording while playing:
final names from the start, the jsonl flushed every `flush_every` frames and the mp4 fragmented at each
keyframe, so a crash leaves a readable prefix; its options say "complete": false until close).
"""
import dataclasses
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

import worldsim
from worldsim.data import vpt
from worldsim.engine import actions as actions_mod

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KEYFRAME_INTERVAL = 20   # frames; one second at 20 fps
CRF = 6                  # about 43 dB PSNR on 128×128 engine frames with yuv444p (see the module docstring)
PIX_FMT = "yuv444p"
PRESET = "ultrafast"     # ~3,000 frames/s at 128×128 on one core; slower presets lose PSNR at the same size
DEFAULT_FPS = 20
PARTIAL = ".partial"
# Fragment the mp4 at keyframes and write its header first, so that a killed recorder leaves a readable file.
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


class TrajectoryError(ValueError):
    """A trajectory file that cannot be read as one: the message names the file (and line)."""


class TrajectoryNotFoundError(FileNotFoundError):
    """A trajectory file that does not exist."""


@dataclass(frozen=True)
class TrajectoryPaths:
    mp4: Path
    jsonl: Path
    options: Path

    @classmethod
    def of(cls, stem) -> "TrajectoryPaths":
        stem = Path(stem)
        return cls(stem.with_name(stem.name + ".mp4"), stem.with_name(stem.name + ".jsonl"),
                   stem.with_name(stem.name + "-options.json"))

    def all(self) -> list[Path]:
        return [self.mp4, self.jsonl, self.options]


def stem_of(path) -> Path:
    """NAME for NAME, NAME.mp4, NAME.jsonl or NAME-options.json."""
    path = Path(path)
    for suffix in (".mp4", ".jsonl", "-options.json"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


@dataclass
class Trajectory:
    """One episode in memory: frames[t] was seen while actions[t] was taken; infos[t] is the env info at t."""
    frames: np.ndarray          # uint8 (N, H, W, 3)
    actions: list[dict]         # MineRL actions, camera [pitch, yaw] degrees
    infos: list[dict]
    options: dict
    name: str = ""
    vectors: np.ndarray | None = None  # float32 (N, 25), filled from actions when not given

    def __post_init__(self):
        if self.vectors is None:
            self.vectors = np.stack([actions_mod.to_vector(a) for a in self.actions]) if self.actions \
                else np.zeros((0, actions_mod.ACTION_DIM), np.float32)
        if not (len(self.frames) == len(self.actions) == len(self.infos) == len(self.vectors)):
            raise ValueError(f"trajectory {self.name!r}: {len(self.frames)} frames, {len(self.actions)} actions, "
                             f"{len(self.infos)} infos and {len(self.vectors)} vectors must agree")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def seed(self) -> int | None:
        return self.options.get("seed")

    @property
    def source(self) -> str | None:
        return self.options.get("source")


def env_options(env) -> dict:
    """What NAME-options.json says of the env a trajectory comes from: its config's fields, and for a world model
    also those of the engine it starts from (fov, view_distance, hud, ...), so that every source names its view."""
    env = getattr(env, "unwrapped", env)
    options = {}
    for config in (getattr(env, "engine_config", None), getattr(env, "config", None)):
        if dataclasses.is_dataclass(config):
            options.update(dataclasses.asdict(config))
    return options


class TrajectoryWriter:
    """Writes NAME.mp4, NAME.jsonl and NAME-options.json one frame at a time (see the module docstring).

    `options` adds to NAME-options.json (fov, view_distance, ...). Used as a context manager, a clean exit
    closes; an exception aborts an atomic writer (nothing is left) and closes a non-atomic one (the prefix).
    """

    def __init__(self, stem: str | Path, width: int, height: int, fps: int = DEFAULT_FPS, source: str = "engine",
                 seed: int | None = None, options: dict | None = None, atomic: bool = True, flush_every: int = 20,
                 *, crf: int = CRF, pix_fmt: str = PIX_FMT):
        if width % 2 or height % 2 or width < 2 or height < 2:
            raise ValueError(f"H.264 needs even frame dimensions, got {width}×{height} (width×height)")
        if source not in vpt.SOURCES:
            raise ValueError(f"source must be one of {vpt.SOURCES}, got {source!r}")
        if int(fps) != fps or fps < 1:
            raise ValueError(f"fps must be a positive whole number, got {fps!r}")
        if int(flush_every) != flush_every or flush_every < 1:
            raise ValueError(f"flush_every must be a positive whole number of frames, got {flush_every!r}")
        self.width, self.height, self.fps, self.source = int(width), int(height), int(fps), source
        self.atomic, self.flush_every = atomic, int(flush_every)
        stem = stem_of(stem)
        self.final = TrajectoryPaths.of(stem)
        self.paths = TrajectoryPaths.of(stem.with_name(stem.name + PARTIAL)) if atomic else self.final
        self.options = {**(options or {}), "resolution": [self.width, self.height], "fps": self.fps,
                        "source": source, "seed": seed, "pix_fmt": pix_fmt, "crf": crf,
                        "versions": {"worldsim": worldsim.__version__, "format": FORMAT_VERSION}}
        self.options.setdefault("fov", None)
        self.options.setdefault("view_distance", None)
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        self._previous: dict | None = None
        self._lines: list[bytes] = []
        self._closed = False
        if not atomic:
            self._write_options(self.paths.options, complete=False)
        self._jsonl = open(self.paths.jsonl, "wb", buffering=0)  # unbuffered: each flush writes whole lines
        self._mp4 = open(self.paths.mp4, "wb", buffering=0)
        self._container = av.open(self._mp4, "w", format="mp4", options={} if atomic else FRAGMENTED_MP4)
        self._stream = self._container.add_stream("libx264", rate=self.fps)
        self._stream.width, self._stream.height, self._stream.pix_fmt = self.width, self.height, pix_fmt
        # threads=1: generation runs one writer per process; a 128×128 frame is too small to split anyway.
        self._stream.options = {"crf": str(crf), "preset": PRESET, "threads": "1"}
        self._stream.codec_context.gop_size = KEYFRAME_INTERVAL

    def write(self, frame: np.ndarray, action: dict, info: dict) -> None:
        """Append frame t (uint8 H×W×3), the action a_t taken while seeing it, and the env info at t."""
        if self._closed:
            raise RuntimeError(f"{self.final.mp4}: writer already closed")
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"{self.final.mp4}: expected a uint8 frame of shape {(self.height, self.width, 3)}, "
                             f"got {frame.dtype} {frame.shape}")
        action = actions_mod.validate(action)
        packets = self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
        self._container.mux(packets)
        line = vpt.record(action, info, self._previous, self.source, self.frames)
        self._lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        self._previous = action
        self.frames += 1
        if self.frames % self.flush_every == 0:
            self._flush_lines()

    def _flush_lines(self) -> None:
        if self._lines:
            self._jsonl.write(b"".join(self._lines))
            self._lines = []

    def _write_options(self, path: Path, complete: bool) -> None:
        options = {**self.options, "frames": self.frames, "complete": complete}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(vpt.to_json(options), indent=2) + "\n")
        os.replace(tmp, path)

    def _finish_files(self) -> None:
        self._container.mux(self._stream.encode())
        self._container.close()
        self._mp4.close()
        self._flush_lines()
        self._jsonl.close()

    def close(self) -> list[Path]:
        """Finish the files and (atomic) rename them into place; returns their paths ([] if no frame came)."""
        if self._closed:
            return self.final.all() if self.final.options.exists() else []
        if self.frames == 0:
            self.abort()
            return []
        self._finish_files()
        self._write_options(self.paths.options, complete=True)
        if self.atomic:  # options last: until it is renamed, NAME.partial-options.json marks NAME unfinished
            for partial, final in zip(self.paths.all(), self.final.all()):
                os.replace(partial, final)
        self._closed = True
        return self.final.all()

    def abort(self) -> None:
        """Stop and remove everything this writer wrote."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_files()
        except (av.FFmpegError, OSError, ValueError):
            pass
        for path in self.paths.all():
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)

    def __enter__(self) -> "TrajectoryWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.atomic:
            self.abort()
        else:
            self.close()


def _read_options(path: Path) -> dict:
    if not path.exists():
        return {}  # VPT contractor data has none
    try:
        options = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrajectoryError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(options, dict):
        raise TrajectoryError(f"{path}: expected a JSON object, got {type(options).__name__}")
    return options


def _read_lines(path: Path) -> tuple[list[dict], bool]:
    """The records of a jsonl file, and whether its last line was cut short (not newline-terminated and bad)."""
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError as e:
        raise TrajectoryError(f"{path}: not UTF-8 text ({e})") from None
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    records = []
    for number, line in enumerate(raw, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(raw) and not text.endswith("\n"):
                return records, True
            raise TrajectoryError(f"{path}:{number}: malformed JSON line ({e})") from None
        if not isinstance(record, dict):
            raise TrajectoryError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records, False


def read_video(path: Path, tolerate_truncation: bool = False) -> np.ndarray:
    """All frames of an mp4 as uint8 (N, H, W, 3); a damaged file raises TrajectoryError naming it."""
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise TrajectoryError(f"{path}: has no video stream")
            for frame in container.decode(container.streams.video[0]):
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as e:
        if not (tolerate_truncation and frames):
            raise TrajectoryError(f"{path}: cannot decode the video after {len(frames)} frames, the file may be "
                                  f"truncated or not an mp4 ({e})") from None
    if not frames:
        raise TrajectoryError(f"{path}: the video has no frames (truncated?)")
    return np.stack(frames)


def read_trajectory(stem, warn_unfinished: bool = True) -> Trajectory:
    """Read NAME.mp4 + NAME.jsonl (+ NAME-options.json when present: VPT data has none).

    Our files give exact actions and infos. A recording that never closed ("complete": false, a crash) gives
    the frames that both files hold, with a warning (unless warn_unfinished is False); otherwise a count
    mismatch is an error.
    """
    stem = stem_of(stem)
    paths = TrajectoryPaths.of(stem)
    for path in (paths.mp4, paths.jsonl):
        if not path.exists():
            raise TrajectoryNotFoundError(f"{path}: no such file (trajectory {stem})")
    options = _read_options(paths.options)
    unfinished = options.get("complete") is False
    records, cut = _read_lines(paths.jsonl)
    frames = read_video(paths.mp4, tolerate_truncation=unfinished)
    if unfinished or cut:
        n = min(len(frames), len(records))
        if not unfinished:
            raise TrajectoryError(f"{paths.jsonl}:{len(records) + 1}: last line cut short")
        if warn_unfinished:
            warnings.warn(f"{stem}: recording was not finished; reading its first {n} frames", stacklevel=2)
        frames, records = frames[:n], records[:n]
    elif len(frames) != len(records):
        raise TrajectoryError(f"{paths.jsonl}: {len(records)} lines for the {len(frames)} frames of {paths.mp4}; "
                              f"lines are missing or extra")
    if "resolution" in options and list(options["resolution"]) != [frames.shape[2], frames.shape[1]]:
        raise TrajectoryError(f"{paths.options}: resolution {options['resolution']} (width, height) but the video "
                              f"is {frames.shape[2]}×{frames.shape[1]}")
    try:
        acts = vpt.parse_actions(records)
    except vpt.LineError as e:
        raise TrajectoryError(f"{paths.jsonl}:{e.line}: {e.message}") from None
    options.setdefault("fps", DEFAULT_FPS)
    options.setdefault("resolution", [frames.shape[2], frames.shape[1]])
    if records and "source" not in options and "source" in records[0]:
        options["source"] = records[0]["source"]
    if records and options.get("seed") is None and "seed" in records[0]:
        options["seed"] = records[0]["seed"]
    return Trajectory(frames, acts, [vpt.info_of(r) for r in records], options, name=stem.name)


def _has_partial(stem: Path) -> bool:
    partial = TrajectoryPaths.of(stem.with_name(stem.name + PARTIAL))
    return any(p.exists() for p in partial.all())


def list_trajectories(directory, include_unfinished: bool = False) -> list[Path]:
    """Stems (directory/NAME) of the trajectories in `directory` that have both NAME.mp4 and NAME.jsonl, sorted.

    Skipped: atomic writes that never finished (NAME.partial.* present) and, unless include_unfinished,
    recordings whose options say "complete": false (their readable prefix can still be read).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TrajectoryNotFoundError(f"{directory}: no such directory")
    stems = []
    for jsonl in sorted(directory.glob("*.jsonl")):
        stem = stem_of(jsonl)
        if stem.name.endswith(PARTIAL) or _has_partial(stem) or not TrajectoryPaths.of(stem).mp4.exists():
            continue
        if not include_unfinished:
            try:
                if _read_options(TrajectoryPaths.of(stem).options).get("complete") is False:
                    continue
            except TrajectoryError:
                pass  # reading it will say what is wrong
        stems.append(stem)
    return stems


def cleanup_partial(directory) -> list[str]:
    """Remove what killed atomic writers left in `directory`; returns the removed file names (and logs them).

    A NAME.partial-options.json means the writer was renaming when it died: NAME.mp4/.jsonl may be the new
    or the old ones, so those go too. Without it nothing was renamed and an older NAME stays.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    stems = {stem_of(p) for p in directory.glob(f"*{PARTIAL}*")}
    for partial_stem in sorted(stems):
        if not partial_stem.name.endswith(PARTIAL):
            continue
        partial = TrajectoryPaths.of(partial_stem)
        stem = partial_stem.with_name(partial_stem.name[: -len(PARTIAL)])
        doomed = partial.all() + [partial.options.with_name(partial.options.name + ".tmp")]
        if partial.options.exists():
            doomed += TrajectoryPaths.of(stem).all()
        gone = [path for path in doomed if path.exists()]
        for path in gone:
            path.unlink()
        log.warning("removed unfinished trajectory %s (%s)", stem, ", ".join(p.name for p in gone))
        removed += [path.name for path in gone]
    return removed
