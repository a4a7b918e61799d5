"""Which key or button does what in the game, as data."""
import pygame

# Held keys → MineRL buttons. Keys not listed here do nothing in the world.
HELD_KEYS = {
    pygame.K_w: "forward",
    pygame.K_s: "back",
    pygame.K_a: "left",
    pygame.K_d: "right",
    pygame.K_SPACE: "jump",
    pygame.K_LSHIFT: "sneak",
    pygame.K_RSHIFT: "sneak",
    pygame.K_LCTRL: "sprint",
    pygame.K_RCTRL: "sprint",
    pygame.K_q: "drop",
    pygame.K_e: "inventory",
}

# Number keys select a hotbar slot (a press, sent for one tick).
HOTBAR_KEYS = {getattr(pygame, f"K_{i}"): f"hotbar.{i}" for i in range(1, 10)}

# Held mouse buttons → MineRL buttons (pygame numbers buttons from 1: left, middle, right).
MOUSE_BUTTONS = {1: "attack", 3: "use"}

# Arrow keys turn the camera: (pitch, yaw) direction per tick, positive pitch looks down.
ARROW_KEYS = {
    pygame.K_UP: (-1.0, 0.0),
    pygame.K_DOWN: (1.0, 0.0),
    pygame.K_LEFT: (0.0, -1.0),
    pygame.K_RIGHT: (0.0, 1.0),
}

# Keys the game itself answers (not sent to the world) → the Game method's command name.
GAME_KEYS = {
    pygame.K_F2: "screenshot",
    pygame.K_F3: "toggle_overlay",
    pygame.K_F5: "toggle_twin",
    pygame.K_r: "toggle_recording",
    pygame.K_BACKSPACE: "rewind",
    pygame.K_n: "new_world",
    pygame.K_LEFTBRACKET: "fewer_steps",
    pygame.K_RIGHTBRACKET: "more_steps",
}
