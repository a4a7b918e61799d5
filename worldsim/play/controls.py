"""What the player's hands do, turned into actions: held keys and buttons and the summed mouse motion become one
MineRL-style action a tick (`InputState`), and the mouse is captured for looking around (`MouseCapture`). Which key
does what is data, in keymap.py."""
import threading

import numpy as np
import pygame

from worldsim.engine import actions
from worldsim.play.keymap import ARROW_KEYS, HELD_KEYS, HOTBAR_KEYS, MOUSE_BUTTONS


class InputState:
    """Held keys and buttons plus the mouse motion summed since the last tick, turned into one action per tick."""

    def __init__(self, config):
        """config: the play config (its mouse_sensitivity and arrow_degrees)."""
        self.config = config
        self.held: set[str] = set()          # MineRL buttons held down
        self.arrows: set[int] = set()        # arrow keys held down
        self.presses: set[str] = set()       # one-tick buttons (hotbar) pressed since the last tick
        self.mouse = np.zeros(2)             # summed (dx, dy) in window pixels since the last tick
        self.wheel = 0                       # summed wheel clicks since the last tick (up is positive)
        self.events_seen = 0                 # events handled so far: a frame made from action() reflects these
        self.lock = threading.Lock()         # the game thread handles events while a worker takes actions

    def handle(self, event) -> None:
        with self.lock:
            self.events_seen += 1
            self._handle(event)

    def _handle(self, event) -> None:
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
        with self.lock:
            self.held.clear()
            self.arrows.clear()

    def action(self, selected_slot: int) -> dict:
        """The action for this tick; clears the one-tick presses and the summed motion."""
        with self.lock:
            return self._action(selected_slot)

    def _action(self, selected_slot: int) -> dict:
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
