"""One jsonl line per frame in the layout of OpenAI VPT's contractor data, and our actions and infos.

A line as VPT's recorder writes it (nested objects; the fields we read are marked *):

    {"mouse": {"dx"*, "dy"*, "buttons"*, "newButtons"*, "x", "y", ...},
     "keyboard": {"keys"*, "newKeys", "chars"},
     "hotbar"*, "isGuiOpen"*, "yaw"*, "pitch"*, "xpos"*, "ypos"*, "zpos"*, "tick"*, ...}

How each field maps to our action (worldsim.engine.actions):
    keyboard.keys     key.keyboard.w/s/a/d → forward/back/left/right, .space → jump, .left.shift → sneak,
                      .left.control → sprint, .q → drop, .e → inventory, .1–.9 → hotbar.1–9.
                      Other keys (escape, f = swapHands, …) have no action here and are ignored.
    mouse.buttons     0 → attack, 1 → use (2 = pickItem is ignored).
    mouse.dx, dy      camera = [dy, dx] × 360/2400 degrees (VPT's CAMERA_SCALER), clipped to ±180°.
                      While isGuiOpen is true the mouse moves a cursor, not the view, so camera is 0.
    hotbar            the selected slot 0–8. Lines without our `camera` field follow VPT's data loader:
                      a change of slot from the previous line (starting from 0) presses hotbar.<slot+1>,
                      because scroll-wheel changes are not in keyboard.keys; and when the first line has
                      newButtons == [0] attack is "stuck" and dropped until a line presses it anew.
And to the info (worldsim.engine.env): xpos/ypos/zpos → pos, yaw, pitch, tick, hotbar → selected_slot.

Our own lines carry these fields besides, which VPT tools ignore: `camera` ([pitch, yaw] degrees exactly as
sent, so a round trip is exact; when present it is used instead of dx/dy and no inference is made), `seed`,
`edits`, `source` (engine / model / human), `target_block`, `crack_stage`, `on_ground`, `in_water`.
A flat line with dotted names ("mouse.dx": …) is read like the nested form.
"""
import numpy as np

from worldsim.engine import actions

CAMERA_DEGREES_PER_PIXEL = 360.0 / 2400.0  # MineRL's mouse sensitivity, as in VPT's data loader
SOURCES = ("engine", "model", "human")

KEY_OF_BUTTON = {
    "forward": "key.keyboard.w", "back": "key.keyboard.s", "left": "key.keyboard.a", "right": "key.keyboard.d",
    "jump": "key.keyboard.space", "sneak": "key.keyboard.left.shift", "sprint": "key.keyboard.left.control",
    "drop": "key.keyboard.q", "inventory": "key.keyboard.e",
    **{f"hotbar.{i}": f"key.keyboard.{i}" for i in range(1, 10)},
}
BUTTON_OF_KEY = {key: button for button, key in KEY_OF_BUTTON.items()}
MOUSE_BUTTON = {"attack": 0, "use": 1}
ATTACK_BUTTON = MOUSE_BUTTON["attack"]


class LineError(ValueError):
    """A line that cannot be read as an action; `line` counts from 1."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


def to_json(value):
    """`value` with numpy scalars and arrays and tuples turned into plain JSON values."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def record(action: dict, info: dict, previous: dict | None, source: str, index: int) -> dict:
    """The jsonl record of frame `index`: validated `action` taken while seeing it and the env `info` there."""
    keys = [key for button, key in KEY_OF_BUTTON.items() if action[button]]
    buttons = [b for name, b in MOUSE_BUTTON.items() if action[name]]
    old_keys = [] if previous is None else [key for button, key in KEY_OF_BUTTON.items() if previous[button]]
    old_buttons = [] if previous is None else [b for name, b in MOUSE_BUTTON.items() if previous[name]]
    pitch, yaw = (float(v) for v in action["camera"])
    line = {
        "mouse": {"dx": yaw / CAMERA_DEGREES_PER_PIXEL, "dy": pitch / CAMERA_DEGREES_PER_PIXEL,
                  "buttons": buttons, "newButtons": [b for b in buttons if b not in old_buttons]},
        "keyboard": {"keys": keys, "newKeys": [k for k in keys if k not in old_keys]},
        "isGuiOpen": False,
        "hotbar": info.get("selected_slot", 0),
        "tick": info.get("tick", index),
    }
    if "pos" in info:
        line["xpos"], line["ypos"], line["zpos"] = info["pos"]
    for name in ("yaw", "pitch", "seed", "edits", "target_block", "crack_stage", "on_ground", "in_water"):
        if name in info:
            line[name] = info[name]
    line["camera"] = [pitch, yaw]
    line["source"] = source
    return to_json(line)


def _field(line: dict, dotted: str):
    """line["mouse"]["dx"] for "mouse.dx", or the flat line["mouse.dx"]; KeyError names the dotted field."""
    if dotted in line:
        return line[dotted]
    value = line
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def info_of(line: dict) -> dict:
    """The env-style info a line records (only the fields it has); tuples where the engine gives tuples."""
    info = {}
    if all(k in line for k in ("xpos", "ypos", "zpos")):
        info["pos"] = (line["xpos"], line["ypos"], line["zpos"])
    for name in ("yaw", "pitch", "tick"):
        if name in line:
            info[name] = line[name]
    if "hotbar" in line:
        info["selected_slot"] = line["hotbar"]
    if "target_block" in line:
        info["target_block"] = None if line["target_block"] is None else tuple(line["target_block"])
    for name in ("crack_stage", "seed", "on_ground", "in_water"):
        if name in line:
            info[name] = line[name]
    if "edits" in line:
        info["edits"] = [tuple(edit) for edit in line["edits"]]
    return info


def _exact_action(line: dict) -> dict:
    """The action of one of our own lines: keys and buttons, and the exact `camera`."""
    action = _keyboard_and_mouse(line)
    action["camera"] = np.asarray(line["camera"], dtype=np.float32)
    return actions.validate(action)


def _keyboard_and_mouse(line: dict) -> dict:
    keys = _field(line, "keyboard.keys")
    buttons = _field(line, "mouse.buttons")
    if not isinstance(keys, list) or not isinstance(buttons, list):
        raise ValueError("keyboard.keys and mouse.buttons must be lists")
    action = actions.noop()
    for key in keys:
        if key in BUTTON_OF_KEY:
            action[BUTTON_OF_KEY[key]] = 1
    for name, button in MOUSE_BUTTON.items():
        action[name] = int(button in buttons)
    return action


def parse_actions(lines: list[dict]) -> list[dict]:
    """Actions of a sequence of lines; LineError names the first line that lacks a field or holds a bad value."""
    out = []
    last_hotbar, attack_stuck = 0, False
    for number, line in enumerate(lines, start=1):
        try:
            if "camera" in line:
                out.append(_exact_action(line))
                continue
            action = _keyboard_and_mouse(line)
            new_buttons = _field(line, "mouse.newButtons") if _has(line, "mouse.newButtons") else []
            if number == 1:
                attack_stuck = new_buttons == [ATTACK_BUTTON]
            elif attack_stuck and ATTACK_BUTTON in new_buttons:
                attack_stuck = False
            if attack_stuck:
                action["attack"] = 0
            if not line.get("isGuiOpen", False):
                camera = np.array([_field(line, "mouse.dy"), _field(line, "mouse.dx")], np.float64)
                camera = np.clip(camera * CAMERA_DEGREES_PER_PIXEL, -actions.CAMERA_LIMIT_DEGREES,
                                 actions.CAMERA_LIMIT_DEGREES)
                action["camera"] = camera.astype(np.float32)
            hotbar = int(line.get("hotbar", last_hotbar))
            if hotbar != last_hotbar:
                action[f"hotbar.{hotbar + 1}"] = 1
            last_hotbar = hotbar
            out.append(actions.validate(action))
        except KeyError as e:
            raise LineError(number, f"missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise LineError(number, str(e)) from None
    return out


def _has(line: dict, dotted: str) -> bool:
    try:
        _field(line, dotted)
    except KeyError:
        return False
    return True
