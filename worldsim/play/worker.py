"""Frame generation apart from the display loop: a thread that steps the env from the latest input.

The game thread reads events into the InputState and redraws at its own rate; the worker takes the input
summed so far whenever it starts a frame (at most `fps` frames a second, back to back when frames are late),
steps the env and hands the result over. Whatever else touches the env (reset, rewind, denoising steps) holds
`lock`, so it lands between two frames, and then calls `restart`, which makes results still in flight stale.
"""
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class StepResult:
    """One env step: the action taken, what it produced, and when."""
    action: dict
    obs: np.ndarray
    info: dict
    reset: bool          # the episode ended and obs/info are the new episode's first
    events_seen: int     # input events the action includes (InputState.events_seen when it was taken)
    started: float       # perf_counter when the action was taken and when the frame was ready
    finished: float
    epoch: int           # the worker's epoch: results of an earlier epoch are stale


def step_env(env, action: dict):
    """One env step with the game's autoreset: (obs, info, reset)."""
    obs, _, terminated, truncated, info = env.step(action)
    if terminated or truncated:
        obs, info = env.reset()
        return obs, info, True
    return obs, info, False


class FrameWorker:
    """Steps `env` in a daemon thread from `input_state`'s latest action, at most `fps` frames a second."""

    def __init__(self, env, input_state, fps: int, info: dict, after_step=None):
        self.env, self.input, self.period = env, input_state, 1.0 / fps
        self.lock = threading.Lock()
        self.results: queue.Queue[StepResult] = queue.Queue()
        self.ready = threading.Event()     # set when a result is queued: the display draws it at once
        self.after_step = after_step       # called under the lock after each step (the game's snapshots)
        self.epoch = 0
        self._slot = info.get("selected_slot", 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-worker", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def restart(self, info: dict) -> None:
        """Call holding `lock` after changing the env outside the worker: queued results become stale."""
        self.epoch += 1
        self._slot = info.get("selected_slot", 0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        next_start = time.perf_counter()
        try:
            while not self._stop.is_set():
                delay = next_start - time.perf_counter()
                if delay > 0 and self._stop.wait(delay):
                    break
                with self.lock:
                    started = time.perf_counter()
                    events_seen = self.input.events_seen
                    action = self.input.action(self._slot)
                    obs, info, reset = step_env(self.env, action)
                    self._slot = info.get("selected_slot", 0)
                    if self.after_step is not None:
                        self.after_step(obs, info, reset)
                    self.results.put(StepResult(action, obs, info, reset, events_seen, started,
                                                time.perf_counter(), self.epoch))
                self.ready.set()
                # late frames start at once, but no time is banked: the world never runs ahead of real time
                next_start = max(next_start + self.period, time.perf_counter() - self.period)
        except BaseException as e:  # noqa: BLE001 - handed to the game thread, which raises it
            self.error = e

    def wait(self, timeout: float) -> None:
        """Until a new result is queued or `timeout` seconds have passed."""
        self.ready.wait(timeout)
        self.ready.clear()

    def drain(self) -> list[StepResult]:
        """Results of the current epoch since the last drain, in order."""
        if self.error is not None:
            raise RuntimeError(f"frame generation failed: {self.error}") from self.error
        out = []
        while True:
            try:
                result = self.results.get_nowait()
            except queue.Empty:
                return out
            if result.epoch == self.epoch:
                out.append(result)
