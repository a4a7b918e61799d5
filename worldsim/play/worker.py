"""Frame generation apart from the display loop: a thread that owns the env and steps it from the latest input.

The game thread reads events into the InputState and redraws at its own rate; the worker takes the input
summed so far whenever it starts a frame (at most `fps` frames a second, back to back when frames are late),
steps the env and hands the result over. Where the env has a `prepare` (the world model's: the last frame's
commit pass into its caches), the worker runs it next, while the frame is shown and before the next input is
read, so that the step after that input has less to do. Whatever else touches the env (making it, reset,
rewind, denoising steps) is handed to the worker with `call`, so it runs on the worker's thread between two
frames; a call that changes the env then calls `restart`, which makes results still in flight stale.

Why every env call runs on this one thread: torch (and numba's default threading layer) compute with OpenMP,
and each thread that runs a parallel region keeps its own pool of OpenMP threads until it exits. Once the pools
together hold more threads than there are cores, libgomp stops spinning between parallel regions and puts its
threads to sleep after each one, so every small op pays for waking them. On the 2-core machine, the shipped
world's sampling and decoding took 23 ms a frame on the thread that had loaded it and 33-42 ms on a second
thread once the first had run any parallel op (making the env is one); with everything on one thread, 23 ms.
"""
import queue
import threading
import time
from dataclasses import dataclass, field

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
    extra: object = None  # what after_step returned (the game's twin frame while it shows the twin)


def step_env(env, action: dict):
    """One env step with the game's autoreset: (obs, info, reset)."""
    obs, _, terminated, truncated, info = env.step(action)
    if terminated or truncated:
        obs, info = env.reset()
        return obs, info, True
    return obs, info, False


@dataclass
class _Call:
    fn: object
    args: tuple
    kwargs: dict
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


class FrameWorker:
    """A daemon thread that runs `call`s at once and, after `start(env, info)`, steps `env` from `input_state`'s
    latest action at most `fps` frames a second."""

    def __init__(self, input_state, fps: int, after_step=None):
        self.env, self.input, self.period = None, input_state, 1.0 / fps
        self.results: queue.Queue[StepResult] = queue.Queue()
        self.ready = threading.Event()     # set when a result is queued: the display draws it at once
        self.after_step = after_step       # called on this thread after each step (the game's snapshots); what
                                           # it returns rides with the result
        self.epoch = 0
        self._slot = 0
        self._calls: queue.Queue[_Call] = queue.Queue()
        self._wake = threading.Event()     # a call came, stepping started, or stop
        self._stepping = False
        self._prepare = None               # the env's `prepare`, where it has one
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="frame-worker", daemon=True)
        self._thread.start()

    def start(self, env, info: dict) -> None:
        """Begin stepping `env`, whose latest info is `info`."""
        self.env, self._slot, self._stepping = env, info.get("selected_slot", 0), True
        self._prepare = getattr(getattr(env, "unwrapped", env), "prepare", None)  # gymnasium's wrappers hide it
        self._wake.set()

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on the worker's thread, between two frames; returns its result or raises its
        error. The calling thread waits meanwhile."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        job = _Call(fn, args, kwargs)
        self._calls.put(job)
        self._wake.set()
        while not job.done.wait(0.1):
            if not self._thread.is_alive():
                raise RuntimeError("the frame worker has stopped") from self.error
        if job.error is not None:
            raise job.error
        return job.result

    def restart(self, info: dict) -> None:
        """Call (on the worker's thread, from a `call`) after changing the env: queued results become stale."""
        self.epoch += 1
        self._slot = info.get("selected_slot", 0)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def _run_calls(self) -> None:
        while True:
            try:
                job = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                job.result = job.fn(*job.args, **job.kwargs)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                job.error = e
            job.done.set()

    def _run(self) -> None:
        next_start = None
        try:
            while not self._stop.is_set():
                self._run_calls()
                if not self._stepping:
                    self._wake.wait()
                    self._wake.clear()
                    continue
                now = time.perf_counter()
                next_start = now if next_start is None else next_start
                if next_start > now:
                    self._wake.wait(next_start - now)
                    self._wake.clear()
                    continue
                started = time.perf_counter()
                events_seen = self.input.events_seen
                action = self.input.action(self._slot)
                obs, info, reset = step_env(self.env, action)
                self._slot = info.get("selected_slot", 0)
                extra = None if self.after_step is None else self.after_step(obs, info, reset)
                self.results.put(StepResult(action, obs, info, reset, events_seen, started,
                                            time.perf_counter(), self.epoch, extra))
                self.ready.set()
                if self._prepare is not None:  # while the frame is shown: the next step's work before its action
                    self._prepare()
                # late frames start at once, but no time is banked: the world never runs ahead of real time
                next_start = max(next_start + self.period, time.perf_counter() - self.period)
        except BaseException as e:  # noqa: BLE001 - handed to the game thread, which raises it
            self.error = e
        finally:
            self._run_calls()  # nobody waits forever on a call that came too late

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
