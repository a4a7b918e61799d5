"""The pygame game loop: read keyboard and mouse, step an environment, show its frames.

The game knows only the gymnasium interface (`reset`, `step`, the `info` keys), so it drives the voxel
engine and the world model alike.
"""
import dataclasses
import datetime
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402

from worldsim.engine import actions  # noqa: E402
from worldsim.play.keymap import ARROW_KEYS, HELD_KEYS, HOTBAR_KEYS, MOUSE_BUTTONS  # noqa: E402


@dataclass
class PlayConfig:
    scale: int = 4                  # window pixels per frame pixel
    fps: int = 20                   # engine ticks per second
    mouse_sensitivity: float = 0.15  # degrees of camera turn per pixel of mouse motion
    arrow_degrees: float = 5.0      # degrees per tick while an arrow key is held
    overlay: bool = False           # start with the F3 overlay shown
    max_ticks: int | None = None    # stop after this many ticks (None: until the window closes)
    record_dir: str = "recordings"  # where R saves recordings (interchange format, source=human)

    def __post_init__(self):
        if self.scale < 1:
            raise ValueError(f"play.scale must be at least 1, got {self.scale}")
        if self.fps < 1:
            raise ValueError(f"play.fps must be at least 1, got {self.fps}")


class NoDisplayError(RuntimeError):
    """Raised when there is no screen to open the game window on."""


def check_display() -> None:
    """Raise NoDisplayError when no window can be opened (a headless machine with no dummy video driver)."""
    if os.environ.get("SDL_VIDEODRIVER") in ("dummy", "offscreen"):
        return
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise NoDisplayError("no display found (DISPLAY and WAYLAND_DISPLAY are unset): the game needs a window")


class InputState:
    """Held keys and buttons plus the mouse motion summed since the last tick, turned into one action per tick."""

    def __init__(self, config: PlayConfig):
        self.config = config
        self.held: set[str] = set()          # MineRL buttons held down
        self.arrows: set[int] = set()        # arrow keys held down
        self.presses: set[str] = set()       # one-tick buttons (hotbar) pressed since the last tick
        self.mouse = np.zeros(2)             # summed (dx, dy) in window pixels since the last tick
        self.wheel = 0                       # summed wheel clicks since the last tick (up is positive)

    def handle(self, event) -> None:
        if event.type == pygame.KEYDOWN:
            if event.key in HELD_KEYS:
                self.held.add(HELD_KEYS[event.key])
            elif event.key in HOTBAR_KEYS:
                self.presses.add(HOTBAR_KEYS[event.key])
            elif event.key in ARROW_KEYS:
                self.arrows.add(event.key)
        elif event.type == pygame.KEYUP:
            self.held.discard(HELD_KEYS.get(event.key))
            self.arrows.discard(event.key)
        elif event.type == pygame.MOUSEBUTTONDOWN and event.button in MOUSE_BUTTONS:
            self.held.add(MOUSE_BUTTONS[event.button])
        elif event.type == pygame.MOUSEBUTTONUP and event.button in MOUSE_BUTTONS:
            self.held.discard(MOUSE_BUTTONS[event.button])
        elif event.type == pygame.MOUSEMOTION:
            self.mouse += event.rel
        elif event.type == pygame.MOUSEWHEEL:
            self.wheel += event.y

    def release_all(self) -> None:
        """Forget every held key, e.g. when the window loses focus and the key-up events go elsewhere."""
        self.held.clear()
        self.arrows.clear()

    def action(self, selected_slot: int) -> dict:
        """The action for this tick; clears the one-tick presses and the summed motion."""
        action = actions.noop()
        for name in self.held | self.presses:
            action[name] = 1
        if self.wheel:  # wheel up moves left along the hotbar, as in Minecraft
            action[f"hotbar.{(selected_slot - self.wheel) % 9 + 1}"] = 1
        dx, dy = self.mouse * self.config.mouse_sensitivity
        arrow = np.sum([ARROW_KEYS[k] for k in self.arrows], axis=0) if self.arrows else np.zeros(2)
        camera = np.array([dy, dx]) + arrow * self.config.arrow_degrees
        action["camera"] = np.clip(camera, -actions.CAMERA_LIMIT_DEGREES, actions.CAMERA_LIMIT_DEGREES).astype(np.float32)
        self.presses.clear()
        self.mouse[:] = 0
        self.wheel = 0
        return action


class MouseCapture:
    """Grabs the mouse for looking around: relative mode where the pygame build has it, else grab + hidden cursor."""

    def __init__(self):
        self.captured = False

    def set(self, captured: bool) -> None:
        self.captured = captured
        if hasattr(pygame.mouse, "set_relative_mode"):  # pygame-ce
            pygame.mouse.set_relative_mode(captured)
        else:  # classic pygame 2.x: SDL switches to relative motion when grabbed with the cursor hidden
            pygame.event.set_grab(captured)
            pygame.mouse.set_visible(not captured)


_COMPASS = ("south", "southwest", "west", "northwest", "north", "northeast", "east", "southeast")


def facing_name(yaw: float) -> str:
    """The compass direction of a yaw in degrees (yaw 0 looks along +z, which Minecraft calls south)."""
    return _COMPASS[round((yaw % 360) / 45) % 8]


class Recording:
    """A recording started with R: every tick's frame, the exact action sent with it and the env's info."""

    def __init__(self, directory: str, env, obs: np.ndarray, info: dict, fps: int):
        from worldsim.data.interchange import TrajectoryWriter  # PyAV loads only when someone records
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        config = getattr(env, "config", None)
        options = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
        h, w = obs.shape[:2]
        # Not atomic: final names from the first frame, flushed as it goes, so a crash leaves a readable prefix.
        self.writer = TrajectoryWriter(Path(directory) / f"human-{stamp}", w, h, fps=fps, source="human",
                                       seed=info.get("seed"), options=options, atomic=False)

    def add(self, obs: np.ndarray, action: dict, info: dict) -> None:
        self.writer.write(obs, action, info)

    def close(self) -> Path | None:
        """Finalise the files; returns the mp4's path (None when no frame was recorded)."""
        files = self.writer.close()
        return files[0] if files else None


class Game:
    """One window showing `env`'s frames and sending it the player's input, one step per tick."""

    def __init__(self, env, config: PlayConfig, seed: int | None = None, title: str = "WorldSim"):
        check_display()
        pygame.display.init()
        pygame.font.init()
        self.env, self.config = env, config
        self.obs, self.info = env.reset(seed=seed)
        h, w = self.obs.shape[:2]
        try:
            self.window = pygame.display.set_mode((w * config.scale, h * config.scale))
        except pygame.error as e:
            raise NoDisplayError(f"could not open the game window: {e}") from e
        pygame.display.set_caption(title)
        self.font = pygame.font.Font(None, max(16, 6 * config.scale))
        self.input = InputState(config)
        self.mouse = MouseCapture()
        self.overlay = config.overlay
        self.recording: Recording | None = None
        self.saved: list[Path] = []   # recordings finished in this game
        self.ticks = 0
        self.tick_times: list[float] = []  # wall-clock time of recent ticks, for the measured fps

    def run(self) -> None:
        """Play until the window closes, Esc is pressed twice, or max_ticks is reached."""
        clock = pygame.time.Clock()
        self.mouse.set(True)
        try:
            while self.tick(pygame.event.get()):
                clock.tick(self.config.fps)
        finally:
            self.stop_recording()  # closing the window mid-recording keeps the recording
            pygame.display.quit()

    def toggle_recording(self) -> None:
        if self.recording is None:
            try:
                self.recording = Recording(self.config.record_dir, self.env, self.obs, self.info, self.config.fps)
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

    def tick(self, events) -> bool:
        """Handle `events`, step the env once and draw; False when the game should end."""
        for event in events:
            if not self.handle(event):
                return False
        action = self.input.action(self.info.get("selected_slot", 0))
        if self.recording is not None:  # frame t with the action a_t sent while it was on screen
            self.recording.add(self.obs, action, self.info)
        self.obs, _, terminated, truncated, self.info = self.env.step(action)
        if terminated or truncated:
            self.obs, self.info = self.env.reset()
        self.draw()
        self.ticks += 1
        self.tick_times = (self.tick_times + [time.perf_counter()])[-self.config.fps:]
        return self.config.max_ticks is None or self.ticks < self.config.max_ticks

    def handle(self, event) -> bool:
        """Game-level keys (quit, Esc, F3, capture); everything else goes to the input state. False to quit."""
        if event.type == pygame.QUIT:
            return False
        if event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE:
            if not self.mouse.captured:
                return False
            self.mouse.set(False)
            self.input.release_all()
            return True
        if event.type == pygame.KEYDOWN and event.key == pygame.K_F3:
            self.overlay = not self.overlay
            return True
        if event.type == pygame.KEYDOWN and event.key == pygame.K_r:
            self.toggle_recording()
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

    def draw(self) -> None:
        h, w = self.obs.shape[:2]
        frame = pygame.image.frombuffer(np.ascontiguousarray(self.obs).tobytes(), (w, h), "RGB")
        pygame.transform.scale(frame.convert(self.window), self.window.get_size(), self.window)
        if self.overlay:
            for i, line in enumerate(self.overlay_lines()):
                text = self.font.render(line, True, (255, 255, 255), (0, 0, 0))
                self.window.blit(text, (4, 4 + i * (self.font.get_linesize() + 2)))
        if self.recording is not None:  # the red dot: this is being recorded
            radius = 3 * self.config.scale
            pygame.draw.circle(self.window, (220, 30, 30), (self.window.get_width() - 2 * radius, 2 * radius), radius)
        pygame.display.flip()

    def overlay_lines(self) -> list[str]:
        """The F3 debug text: measured fps, position, facing, tick, target."""
        span = self.tick_times[-1] - self.tick_times[0] if len(self.tick_times) > 1 else 0.0
        fps = (len(self.tick_times) - 1) / span if span > 0 else 0.0
        info = self.info
        x, y, z = info.get("pos", (math.nan,) * 3)
        yaw, pitch = info.get("yaw", math.nan), info.get("pitch", math.nan)
        return [
            f"{fps:5.1f} fps",
            f"XYZ {x:.2f} / {y:.2f} / {z:.2f}",
            f"facing {facing_name(yaw)} (yaw {yaw:.1f}, pitch {pitch:.1f})",
            f"tick {info.get('tick', self.ticks)}  slot {info.get('selected_slot', 0) + 1}",
            f"target {info.get('target_block')}",
        ]


def play(env, config: PlayConfig, seed: int | None = None) -> int:
    """Open the window and play `env`; returns the number of ticks played."""
    game = Game(env, config, seed=seed)
    game.run()
    return game.ticks
