"""The pygame game loop: read keyboard and mouse, step an environment, show its frames.

The game knows only the gymnasium interface (`reset`, `step`, the `info` keys), so it drives the voxel
engine and the world model alike.
"""
import collections
import datetime
import gc
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402

from worldsim.play.controls import InputState, MouseCapture  # noqa: E402
from worldsim.play.keymap import GAME_KEYS  # noqa: E402
from worldsim.play.worker import FrameWorker, StepResult, step_env  # noqa: E402

GENERATION_MODES = ("auto", "thread", "inline")
SLOW_WINDOW_FRAMES = 1200  # the model's frame times kept for `slow_play_hint`: a minute at 20 frames/s
SLOW_MIN_FRAMES = 20       # fewer frames than this say too little to judge the pace by


@dataclass
class PlayConfig:
    scale: int = 4                  # window pixels per frame pixel
    fps: int = 20                   # engine ticks per second
    mouse_sensitivity: float = 0.15  # degrees of camera turn per pixel of mouse motion
    arrow_degrees: float = 5.0      # degrees per tick while an arrow key is held
    overlay: bool = False           # start with the F3 overlay shown
    max_ticks: int | None = None    # stop after this many ticks (None: until the window closes)
    record_dir: str = "recordings"  # where R saves recordings (interchange format, source=human or model)
    screenshot_dir: str = "screenshots"  # where F2 saves PNGs of the window
    generation: str = "auto"        # thread: frames made in a worker thread; inline: in the loop; auto: thread
                                    # for the world model, inline for the engine
    display_fps: int = 120          # loop ticks per second while a worker makes the frames: each reads the input,
                                    # and redraws the window when a new frame came or an event other than a mouse
                                    # move did (a move shows only in the frame it makes)
    hud: bool = True                # the world model's status line: fps, ms per frame, steps, context
    rewind_seconds: float = 5.0     # how far Backspace goes back
    snapshot_every: int = 10        # frames between the snapshots Backspace returns to
    min_steps: int = 1              # the range [ and ] move the denoising steps in
    max_steps: int = 16
    headless_seconds: float = 10.0  # the scripted walk played when there is no display

    def __post_init__(self):
        if self.scale < 1:
            raise ValueError(f"play.scale must be at least 1, got {self.scale}")
        if self.fps < 1:
            raise ValueError(f"play.fps must be at least 1, got {self.fps}")
        if self.display_fps < 1:
            raise ValueError(f"play.display_fps must be at least 1, got {self.display_fps}")
        if self.generation not in GENERATION_MODES:
            raise ValueError(f"play.generation must be one of {GENERATION_MODES}, got {self.generation!r}")
        if self.snapshot_every < 1 or self.rewind_seconds <= 0:
            raise ValueError("play.snapshot_every must be at least 1 and play.rewind_seconds positive")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"play.min_steps and max_steps must satisfy 1 <= {self.min_steps} <= {self.max_steps}")

    @property
    def snapshots_kept(self) -> int:
        """Ring size: enough snapshots to reach rewind_seconds back, plus the one just taken."""
        return math.ceil(self.rewind_seconds * self.fps / self.snapshot_every) + 1


class NoDisplayError(RuntimeError):
    """Raised when there is no screen to open the game window on."""


def check_display() -> None:
    """Raise NoDisplayError when no window can be opened (a headless machine with no dummy video driver)."""
    if os.environ.get("SDL_VIDEODRIVER") in ("dummy", "offscreen"):
        return
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise NoDisplayError("no display found (DISPLAY and WAYLAND_DISPLAY are unset): the game needs a window")


_COMPASS = ("south", "southwest", "west", "northwest", "north", "northeast", "east", "southeast")


def facing_name(yaw: float) -> str:
    """The compass direction of a yaw in degrees (yaw 0 looks along +z, which Minecraft calls south)."""
    return _COMPASS[round((yaw % 360) / 45) % 8]


class Recording:
    """A recording started with R: every tick's frame, the exact action sent with it and the env's info.

    `source` is "model" when the world model made the frames, else "human" (a person playing the engine)."""

    def __init__(self, directory: str, env, obs: np.ndarray, info: dict, fps: int, source: str = "human"):
        from worldsim.data.interchange import TrajectoryWriter, env_options  # PyAV loads only when someone records
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        options = env_options(env)
        h, w = obs.shape[:2]
        # Not atomic: final names from the first frame, flushed as it goes, so a crash leaves a readable prefix.
        self.writer = TrajectoryWriter(Path(directory) / f"{source}-{stamp}", w, h, fps=fps, source=source,
                                       seed=info.get("seed"), options=options, atomic=False)

    def add(self, obs: np.ndarray, action: dict, info: dict) -> None:
        self.writer.write(obs, action, info)

    def close(self) -> Path | None:
        """Finalise the files; returns the mp4's path (None when no frame was recorded)."""
        files = self.writer.close()
        return files[0] if files else None


def frame_source(env) -> str:
    """"model" for an env whose frames a model makes (it says so with `frame_source`), else "engine"."""
    return getattr(getattr(env, "unwrapped", env), "frame_source", "engine")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 frames."""
    mse = np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


@dataclass
class Snapshot:
    """A point Backspace can return to: the env's own snapshot (or engine state) with the frame and info."""
    state: object
    obs: np.ndarray
    info: dict


class Game:
    """One window showing `env`'s frames and sending it the player's input.

    Inline generation steps the env once per tick of the loop; threaded generation (the world model's default)
    steps it in a FrameWorker while the loop keeps reading input at display_fps and redraws when there is
    something new to show (no redraw competes with the worker for the CPU while nothing changed)."""

    def __init__(self, env, config: PlayConfig, seed: int | None = None, title: str = "WorldSim"):
        """env: the env to play, or a function that makes it. With threaded generation the worker makes it
        (and makes every later call on it) on its own thread: worker.py says why."""
        check_display()
        pygame.display.init()
        pygame.font.init()
        self.config = config
        self.input = InputState(config)
        self.show_twin = False
        self.twin: np.ndarray | None = None  # the twin's frame beside self.obs while the twin is shown
        self.worker = None if config.generation == "inline" else \
            FrameWorker(self.input, config.fps, after_step=self._after_step)
        try:
            self.env = self._on_env(env) if callable(env) and not hasattr(env, "step") else env
            self.source = frame_source(self.env)
            if config.generation == "auto" and self.source != "model":  # the engine steps inline
                self.worker.stop()
                self.worker = None
            self.snapshots: collections.deque[Snapshot] = collections.deque(maxlen=config.snapshots_kept)
            self.obs, self.info = self._on_env(self._first_reset, seed)
        except BaseException:
            if self.worker is not None:
                self.worker.stop()
            raise
        self.scale = config.scale
        try:
            self.window = pygame.display.set_mode(self._window_size(twin=False))
        except pygame.error as e:
            if self.worker is not None:
                self.worker.stop()
            raise NoDisplayError(f"could not open the game window: {e}") from e
        pygame.display.set_caption(title)
        self.font = pygame.font.Font(None, max(16, 6 * config.scale))
        self.mouse = MouseCapture()
        self.overlay = config.overlay
        self.recording: Recording | None = None
        self.saved: list[Path] = []   # recordings finished in this game
        self.screenshots: list[Path] = []
        self.ticks = 0
        self.draws = 0  # window redraws
        self.tick_times: list[float] = []  # wall-clock time of recent frames, for the measured fps
        self.shown: list[tuple[int, float]] = []  # (input events a new frame reflects, when it was first drawn)
        self.frame_ms: collections.deque[float] = collections.deque(maxlen=SLOW_WINDOW_FRAMES)  # the model's ms

    def _first_reset(self, seed):
        obs, info = self.env.reset(seed=seed)
        self._take_snapshot(obs, info)
        return obs, info

    def _on_env(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on the thread that makes the frames: the worker's, or this one inline."""
        return fn(*args, **kwargs) if self.worker is None else self.worker.call(fn, *args, **kwargs)

    def start(self) -> None:
        """Start making frames in the worker (threaded generation; inline, each tick makes one). What exists by
        now (the model, and with world.compile its compiled graphs: hundreds of thousands of objects) lives as long
        as the game: frozen out of the garbage collector, so that no full collection walks it mid-play. One did,
        holding the interpreter for 0.4-0.5 s, in 2 of 5 twenty-second sessions of compiled play on the 2-core CPU."""
        gc.freeze()
        if self.worker is not None:
            self.worker.start(self.env, self.info)

    def _window_size(self, twin: bool) -> tuple[int, int]:
        h, w = self.obs.shape[:2]
        return (w * self.scale * (2 if twin else 1), h * self.scale)

    def run(self) -> None:
        """Play until the window closes, Esc is pressed twice, or max_ticks is reached."""
        clock = pygame.time.Clock()
        self.mouse.set(True)
        self.start()
        try:
            while self.tick(pygame.event.get()):
                self.wait(clock)
        finally:
            self.close()

    def wait(self, clock) -> None:
        """Until the next tick: 1/fps inline; with a worker 1/display_fps, or less when a new frame is ready."""
        if self.worker is None:
            clock.tick(self.config.fps)
        else:
            self.worker.wait(1.0 / self.config.display_fps)

    def close(self) -> None:
        """Stop generating, keep a recording in progress, close the window."""
        if self.worker is not None:
            self.worker.stop()
        self.stop_recording()  # closing the window mid-recording keeps the recording
        pygame.display.quit()
        gc.unfreeze()  # what `start` froze may be collected again (at exit, too: native objects then find no leak)

    # ------------------------------------------------------------------ the loop
    def tick(self, events) -> bool:
        """Handle `events`, then step the env once (inline) or take the worker's new frames, and draw;
        False when the game should end."""
        for event in events:
            if not self.handle(event):
                return False
        if self.worker is None:
            started = time.perf_counter()
            events_seen = self.input.events_seen
            action = self.input.action(self.info.get("selected_slot", 0))
            obs, info, reset = step_env(self.env, action)
            extra = self._after_step(obs, info, reset)
            results = [StepResult(action, obs, info, reset, events_seen, started, time.perf_counter(), 0, extra)]
        else:
            results = self.worker.drain()
        for result in results:
            self.apply(result)
        if results or self.draws == 0 or any(event.type != pygame.MOUSEMOTION for event in events):
            self.draw(new_frame=bool(results))
        if self.worker is None and results:  # (the worker prepares on its own thread)
            env = getattr(self.env, "unwrapped", self.env)
            if hasattr(env, "prepare"):
                env.prepare()
        limit = self.config.max_ticks
        return limit is None or self.ticks < limit

    def apply(self, result: StepResult) -> None:
        """Take one step's result: record the frame that was on screen with its action, show the new one."""
        if self.recording is not None:  # frame t with the action a_t sent while it was on screen
            self.recording.add(self.obs, result.action, self.info)
        self.obs, self.info = result.obs, result.info
        if result.extra is not None or not self.show_twin:  # (a frame made as F5 was pressed has none)
            self.twin = result.extra
        self.ticks += 1
        self.tick_times = (self.tick_times + [time.perf_counter()])[-self.config.fps:]
        if result.info.get("ms_per_frame") is not None:
            self.frame_ms.append(result.info["ms_per_frame"])
        self.shown.append((result.events_seen, math.nan))

    def _after_step(self, obs, info, reset: bool):
        """After each step, on the frame-making thread: a snapshot every snapshot_every frames; returns the
        twin's frame while the twin is shown."""
        if reset:
            self.snapshots.clear()
        if reset or info.get("tick", 0) % self.config.snapshot_every == 0:
            self._take_snapshot(obs, info)
        return self._twin_now()

    def _twin_now(self):
        return self.env.twin_frame if self.show_twin else None

    def _take_snapshot(self, obs, info) -> None:
        env = getattr(self.env, "unwrapped", self.env)
        if hasattr(env, "snapshot"):
            state = env.snapshot()
        elif hasattr(env, "get_state"):
            state = env.get_state()
        else:
            return
        self.snapshots.append(Snapshot(state, obs.copy(), dict(info)))

    def _restarted(self, info: dict) -> None:
        """After the env changed outside a step (on the frame-making thread): results in flight are stale."""
        if self.worker is not None:
            self.worker.restart(info)

    # ------------------------------------------------------------------ keys
    def handle(self, event) -> bool:
        """Game-level keys (quit, Esc, F2, F3, F5, R, N, Backspace, [ ]); everything else goes to the input
        state. False to quit."""
        if event.type == pygame.QUIT:
            return False
        if event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE:
            if not self.mouse.captured:
                return False
            self.mouse.set(False)
            self.input.release_all()
            return True
        if event.type == pygame.KEYDOWN and event.key in GAME_KEYS:
            getattr(self, GAME_KEYS[event.key])()
            return True
        if event.type == pygame.MOUSEBUTTONDOWN and not self.mouse.captured:
            self.mouse.set(True)  # the click that captures the mouse is not an attack
            return True
        if event.type == pygame.WINDOWFOCUSLOST:
            self.input.release_all()
        if event.type == pygame.MOUSEMOTION and not self.mouse.captured:
            return True
        self.input.handle(event)
        return True

    def toggle_overlay(self) -> None:
        self.overlay = not self.overlay

    def toggle_recording(self) -> None:
        if self.recording is None:
            try:
                self.recording = Recording(self.config.record_dir, self.env, self.obs, self.info, self.config.fps,
                                           source="model" if self.source == "model" else "human")
            except (ValueError, OSError) as e:  # e.g. odd frame sizes, an unwritable directory: keep playing
                print(f"cannot record: {e}")
                return
            print(f"recording to {self.recording.writer.final.mp4}")
        else:
            self.stop_recording()

    def stop_recording(self) -> None:
        if self.recording is not None:
            path = self.recording.close()
            self.recording = None
            if path is None:
                print("the recording had no frames; nothing saved")
                return
            self.saved.append(path)
            print(f"saved recording {path}")

    def screenshot(self) -> Path | None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        path = Path(self.config.screenshot_dir) / f"screenshot-{stamp}.png"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            pygame.image.save(self.window, str(path))
        except (OSError, pygame.error) as e:
            print(f"cannot save a screenshot: {e}")
            return None
        self.screenshots.append(path)
        print(f"saved screenshot {path}")
        return path

    def toggle_twin(self) -> None:
        if self.show_twin:
            self.show_twin, self.twin = False, None
        else:
            twin = self._on_env(lambda: getattr(self.env, "twin_frame", None))
            if twin is None:
                print("no twin: the engine runs beside the model only for seed prompts with world.twin=true")
                return
            self.show_twin, self.twin = True, twin
        self.window = pygame.display.set_mode(self._window_size(self.show_twin))

    def rewind(self) -> None:
        """Back about rewind_seconds: to the newest snapshot at least that old (else the oldest). A recording
        stops first: each of its frames must follow from the one before."""
        if not self.snapshots:
            print("nothing to rewind to")
            return
        self.stop_recording()
        target = self.info.get("tick", self.ticks) - round(self.config.rewind_seconds * self.config.fps)

        def back():  # on the frame-making thread, where the snapshots are taken
            older = [s for s in self.snapshots if s.info.get("tick", 0) <= target]
            snap = older[-1] if older else self.snapshots[0]
            while self.snapshots and self.snapshots[-1] is not snap:
                self.snapshots.pop()
            env = getattr(self.env, "unwrapped", self.env)
            if hasattr(env, "restore"):
                env.restore(snap.state)
            else:
                env.set_state(snap.state)
            if hasattr(env, "prepare"):  # as after every frame: the step after the rewind only denoises
                env.prepare()
            self._restarted(snap.info)
            return snap, self._twin_now()

        snap, self.twin = self._on_env(back)
        self.obs, self.info = snap.obs.copy(), dict(snap.info)

    def new_world(self) -> None:
        """A new episode in a new world (seed drawn by the env)."""
        self.stop_recording()

        def reset():
            obs, info = self.env.reset()
            self.snapshots.clear()
            self._take_snapshot(obs, info)
            self._restarted(info)
            return obs, info, self._twin_now()

        self.obs, self.info, self.twin = self._on_env(reset)

    def _change_steps(self, delta: int) -> None:
        if not hasattr(self.env, "set_steps"):
            print("denoising steps apply to the world model only")
            return
        steps = int(np.clip(self.env.steps + delta, self.config.min_steps, self.config.max_steps))
        self._on_env(self.env.set_steps, steps)
        self.info = {**self.info, "denoise_steps": steps}

    def fewer_steps(self) -> None:
        self._change_steps(-1)

    def more_steps(self) -> None:
        self._change_steps(+1)

    # ------------------------------------------------------------------ drawing
    def draw(self, new_frame: bool = True) -> None:
        h, w = self.obs.shape[:2]
        size = (w * self.scale, h * self.scale)
        self._blit(self.obs, (0, 0), size)
        twin = self.twin if self.show_twin else None
        if twin is not None:
            self._blit(twin, (size[0], 0), size)
        lines = self.overlay_lines() if self.overlay else []
        if self.config.hud and (self.source == "model" or twin is not None):
            lines = [self.hud_line(twin)] + lines
        for i, line in enumerate(lines):
            text = self.font.render(line, True, (255, 255, 255), (0, 0, 0))
            self.window.blit(text, (4, 4 + i * (self.font.get_linesize() + 2)))
        if self.recording is not None:  # the red dot: this is being recorded
            radius = 3 * self.config.scale
            pygame.draw.circle(self.window, (220, 30, 30), (size[0] - 2 * radius, 2 * radius), radius)
        pygame.display.flip()
        self.draws += 1
        if new_frame and self.shown:
            self.shown[-1] = (self.shown[-1][0], time.perf_counter())
            del self.shown[:-256]

    def _blit(self, frame: np.ndarray, where: tuple[int, int], size: tuple[int, int]) -> None:
        h, w = frame.shape[:2]
        surface = pygame.image.frombuffer(np.ascontiguousarray(frame).tobytes(), (w, h), "RGB")
        self.window.blit(pygame.transform.scale(surface.convert(self.window), size), where)

    def measured_fps(self) -> float:
        span = self.tick_times[-1] - self.tick_times[0] if len(self.tick_times) > 1 else 0.0
        return (len(self.tick_times) - 1) / span if span > 0 else 0.0

    def hud_line(self, twin: np.ndarray | None = None) -> str:
        """The status line: fps, model ms per frame, denoising steps, context frames (and PSNR to the twin)."""
        info = self.info
        ms = info.get("ms_per_frame")
        parts = [f"{self.measured_fps():4.1f} fps", "-- ms/frame" if ms is None else f"{ms:.0f} ms/frame"]
        if "denoise_steps" in info:
            parts += [f"{info['denoise_steps']} steps", f"context {info.get('context_frames', 0)}"]
        if twin is not None:
            parts.append(f"PSNR {psnr(self.obs, twin):.1f} dB")
        return "  ".join(parts)

    def slow_play_hint(self) -> str | None:
        """What to try when the model's frames took longer than the game's pace over the last minute of play (the
        world then runs slower than real time), as one line for the console; None when they kept pace."""
        if len(self.frame_ms) < SLOW_MIN_FRAMES:
            return None
        median, budget = statistics.median(self.frame_ms), 1000.0 / self.config.fps
        if median <= budget:
            return None
        env = getattr(self.env, "unwrapped", self.env)
        tips = ["[ takes a denoising step off each frame"]
        if getattr(env, "device", None) == "cpu" and not getattr(getattr(env, "config", None), "compile", True):
            tips.insert(0, "world.compile=true makes them about a fifth faster on a 2-core CPU (compiled when the "
                           "world starts: 1-4 minutes the first time, about 10 s once inductor's cache holds it)")
        return (f"the model's frames took {median:.0f} ms (median) against the {budget:.0f} ms a frame of "
                f"{self.config.fps} frames/s, so the world ran slower than real time: " + "; ".join(tips))

    def overlay_lines(self) -> list[str]:
        """The F3 debug text: measured fps, position, facing, tick, target."""
        info = self.info
        x, y, z = info.get("pos", (math.nan,) * 3)
        yaw, pitch = info.get("yaw", math.nan), info.get("pitch", math.nan)
        return [
            f"{self.measured_fps():5.1f} fps",
            f"XYZ {x:.2f} / {y:.2f} / {z:.2f}",
            f"facing {facing_name(yaw)} (yaw {yaw:.1f}, pitch {pitch:.1f})",
            f"tick {info.get('tick', self.ticks)}  slot {info.get('selected_slot', 0) + 1}",
            f"target {info.get('target_block')}",
        ]


def play(env, config: PlayConfig, seed: int | None = None) -> Game:
    """Open the window and play `env` (or the env a function makes) until the player quits; returns the game
    (`ticks` played, `slow_play_hint`, recordings `saved`)."""
    game = Game(env, config, seed=seed)
    game.run()
    return game
