"""Player state and movement physics: a 0.6 × 1.8 box walking, jumping, sneaking and swimming, 20 ticks/s.

The constants follow Minecraft's Java edition, so that speeds and jump arcs match the recordings of the
game that open world models are trained on. Units are blocks and ticks; a velocity is blocks per tick.
Coordinates: y is up; the position is the centre of the box's bottom face (the feet).
"""
import math
from dataclasses import asdict, dataclass

from worldsim.engine.blocks import SOLID, WATER

TICKS_PER_SECOND = 20
HALF_WIDTH = 0.3            # the box is 0.6 wide in x and z
HEIGHT = 1.8
EYE_HEIGHT = 1.62
SNEAK_EYE_HEIGHT = 1.54     # crouching lowers the camera a little, as in Minecraft 1.8–1.13

# Vertical motion: each tick v_y = (v_y - GRAVITY) * VERTICAL_DRAG. A jump starting at JUMP_VELOCITY peaks at
# about 1.252 blocks after 6 ticks, so a one-block step can be jumped onto and a two-block wall cannot.
GRAVITY = 0.08
VERTICAL_DRAG = 0.98
JUMP_VELOCITY = 0.42

# Horizontal motion on the ground: v = (v + a) * GROUND_DRAG each tick, so the steady distance per tick is
# a / (1 - GROUND_DRAG). Choosing a = speed * (1 - GROUND_DRAG) makes the steady speed exactly `speed`, and
# the 0.546 drag (Minecraft's 0.6 block slipperiness times 0.91 air drag) gives its quick but not instant
# start and stop (about 90% of full speed after 3 ticks).
GROUND_DRAG = 0.546
WALK_SPEED = 4.317 / TICKS_PER_SECOND
SPRINT_SPEED = 5.612 / TICKS_PER_SECOND
SNEAK_FACTOR = 0.3          # sneaking scales the input: 1.295 blocks/s
# In the air the player steers weakly: a small push each tick against a light drag (steady 4.4 blocks/s).
AIR_DRAG = 0.91
AIR_ACCEL = 0.02
AIR_SPRINT_ACCEL = 0.026

# Water: heavy drag on every axis, weak gravity; holding jump swims up (steady 2 blocks/s up, sinking
# 1.6 blocks/s, swimming 2 blocks/s across). Pushing against a bank with jump held lifts the player out.
WATER_DRAG = 0.8
WATER_ACCEL = 0.02
WATER_GRAVITY = 0.02
SWIM_UP_ACCEL = 0.04
WATER_EXIT_VELOCITY = 0.3
# The part of the box that counts as "in water": from 0.4 to 1.4 above the feet, as in Minecraft, so
# wading in a shallow puddle is walking and a body in water swims.
WATER_CHECK_LOW, WATER_CHECK_HIGH = 0.4, 1.4

# Sneaking backs movement off an edge: a step is shortened by SNEAK_EDGE_STEP until the box, moved by it and
# lowered by SNEAK_EDGE_PROBE (the step-up height), still rests on something solid.
SNEAK_EDGE_STEP = 0.05
SNEAK_EDGE_PROBE = 0.6

PITCH_LIMIT = 90.0
# Touching faces are not overlaps: a box resting exactly on a block must not count as inside it, whatever
# the last bit of the float says.
EPS = 1e-7


@dataclass
class Player:
    """Everything about the player that a step changes; plain values so that it round-trips through JSON."""
    x: float
    y: float
    z: float
    vx: float = 0.0
    vy: float = 0.0
    vz: float = 0.0
    yaw: float = 0.0          # degrees in [-180, 180); 0 looks along +z, 90 along -x
    pitch: float = 0.0        # degrees in [-90, 90]; positive looks down (MineRL)
    on_ground: bool = False
    in_water: bool = False
    sneaking: bool = False
    selected_slot: int = 0
    break_target: tuple[int, int, int] | None = None  # the block attack has been held on
    break_progress: int = 0   # ticks attack has been held on break_target
    use_cooldown: int = 0     # ticks until holding use places again

    @property
    def eye(self) -> tuple[float, float, float]:
        return self.x, self.y + (SNEAK_EYE_HEIGHT if self.sneaking else EYE_HEIGHT), self.z

    def box(self) -> tuple[list[float], list[float]]:
        """The collision box as (min corner, max corner)."""
        return ([self.x - HALF_WIDTH, self.y, self.z - HALF_WIDTH],
                [self.x + HALF_WIDTH, self.y + HEIGHT, self.z + HALF_WIDTH])

    def to_dict(self) -> dict:
        state = asdict(self)
        state["break_target"] = None if self.break_target is None else list(self.break_target)
        return state

    @classmethod
    def from_dict(cls, state: dict) -> "Player":
        state = dict(state)
        if state.get("break_target") is not None:
            state["break_target"] = tuple(int(v) for v in state["break_target"])
        return cls(**state)


def turn(player: Player, camera) -> None:
    """Apply a camera move [pitch, yaw] in degrees: pitch clamped to ±90, yaw wrapped to [-180, 180)."""
    player.pitch = min(PITCH_LIMIT, max(-PITCH_LIMIT, player.pitch + float(camera[0])))
    player.yaw = (player.yaw + float(camera[1]) + 180.0) % 360.0 - 180.0


# ------------------------------------------------------------------------------------------------ collision
def _cells(lo, hi):
    """Integer cells overlapping the box [lo, hi], touching faces excluded."""
    ranges = [range(math.floor(l + EPS), math.ceil(h - EPS)) for l, h in zip(lo, hi)]
    return ((x, y, z) for x in ranges[0] for y in ranges[1] for z in ranges[2])


def _any_block(world, lo, hi, wanted) -> bool:
    return any(wanted(world.get_block(*cell)) for cell in _cells(lo, hi))


def _is_solid(block: int) -> bool:
    return bool(SOLID[block])


def _sweep(world, lo, hi, axis: int, d: float) -> float:
    """How far the box [lo, hi] can move along `axis` towards d before touching a solid block."""
    if d == 0.0:
        return 0.0
    lo2, hi2 = list(lo), list(hi)
    if d > 0:
        hi2[axis] += d
    else:
        lo2[axis] += d
    # Along the moving axis take every cell the swept box touches; across it, only real overlaps.
    ranges = [range(math.floor(l + EPS), math.ceil(h - EPS)) for l, h in zip(lo2, hi2)]
    ranges[axis] = range(math.floor(lo2[axis]), math.ceil(hi2[axis]))
    for x in ranges[0]:
        for y in ranges[1]:
            for z in ranges[2]:
                if not SOLID[world.get_block(x, y, z)]:
                    continue
                c = (x, y, z)[axis]
                if d > 0 and c >= hi[axis] - EPS:       # ahead of the box, not already overlapping it
                    d = min(d, c - hi[axis])
                elif d < 0 and c + 1 <= lo[axis] + EPS:
                    d = max(d, c + 1 - lo[axis])
    return d


def _back_off_edge(world, player: Player, dx: float, dz: float) -> tuple[float, float]:
    """Shorten a sneaking step so that the box keeps resting on a solid block (never walks off an edge)."""
    lo, hi = player.box()

    def supported(sx, sz):
        return _any_block(world, [lo[0] + sx, lo[1] - SNEAK_EDGE_PROBE, lo[2] + sz],
                          [hi[0] + sx, hi[1] - SNEAK_EDGE_PROBE, hi[2] + sz], _is_solid)

    def shorten(d):
        return 0.0 if abs(d) < SNEAK_EDGE_STEP else d - math.copysign(SNEAK_EDGE_STEP, d)

    while dx != 0.0 and not supported(dx, 0.0):
        dx = shorten(dx)
    while dz != 0.0 and not supported(0.0, dz):
        dz = shorten(dz)
    while dx != 0.0 and dz != 0.0 and not supported(dx, dz):
        dx, dz = shorten(dx), shorten(dz)
    return dx, dz


def in_water(world, player: Player) -> bool:
    lo, hi = player.box()
    lo[1], hi[1] = player.y + WATER_CHECK_LOW, player.y + WATER_CHECK_HIGH
    return _any_block(world, lo, hi, lambda block: block == WATER)


def settle(world, player: Player) -> None:
    """Set on_ground and in_water from the blocks around the player, e.g. at spawn or after a teleport."""
    lo, hi = player.box()
    player.on_ground = player.vy <= 0 and _any_block(world, [lo[0], lo[1] - 2 * EPS, lo[2]],
                                                     [hi[0], lo[1], hi[2]], _is_solid)
    player.in_water = in_water(world, player)


# -------------------------------------------------------------------------------------------------- moving
def _input_direction(action: dict, yaw: float) -> tuple[float, float]:
    """The unit (x, z) direction the movement keys push towards, or (0, 0)."""
    forward = action["forward"] - action["back"]
    strafe = action["right"] - action["left"]
    if forward == 0 and strafe == 0:
        return 0.0, 0.0
    norm = math.hypot(forward, strafe)
    yaw_r = math.radians(yaw)
    # forward is look_direction at pitch 0: (-sin, cos); right is a quarter turn clockwise: (-cos, -sin)
    fx, fz = -math.sin(yaw_r), math.cos(yaw_r)
    rx, rz = -math.cos(yaw_r), -math.sin(yaw_r)
    return (forward * fx + strafe * rx) / norm, (forward * fz + strafe * rz) / norm


def _acceleration(player: Player, action: dict) -> float:
    """How much velocity the movement keys add this tick, before the direction."""
    sprinting = action["sprint"] and action["forward"] and not action["sneak"]
    if player.in_water:
        accel = WATER_ACCEL
    elif player.on_ground:
        accel = (SPRINT_SPEED if sprinting else WALK_SPEED) * (1.0 - GROUND_DRAG)
    else:
        accel = AIR_SPRINT_ACCEL if sprinting else AIR_ACCEL
    return accel * (SNEAK_FACTOR if action["sneak"] else 1.0)


def move(world, player: Player, action: dict) -> None:
    """Advance the player's body one tick under `action`'s movement keys (forward … sprint)."""
    player.sneaking = bool(action["sneak"])
    was_on_ground = player.on_ground  # friction comes from where the tick started, as in Minecraft
    if action["jump"]:
        if player.in_water:
            player.vy += SWIM_UP_ACCEL
        elif player.on_ground:
            player.vy = JUMP_VELOCITY
    accel = _acceleration(player, action)
    ux, uz = _input_direction(action, player.yaw)
    player.vx += accel * ux
    player.vz += accel * uz

    dx, dy, dz = player.vx, player.vy, player.vz
    if player.sneaking and player.on_ground and not player.in_water:
        dx, dz = _back_off_edge(world, player, dx, dz)
    # One sweep per axis (y, x, z, in Minecraft's order): nothing tunnels, and a wall stops only its own axis,
    # so the player slides along it.
    lo, hi = player.box()
    moved = []
    for axis, d in ((1, dy), (0, dx), (2, dz)):
        d_free = _sweep(world, lo, hi, axis, d)
        lo[axis] += d_free
        hi[axis] += d_free
        moved.append(d_free)
    my, mx, mz = moved
    player.x, player.y, player.z = player.x + mx, player.y + my, player.z + mz

    hit_x, hit_y, hit_z = mx != dx, my != dy, mz != dz
    # Resting (no vertical move tried, as right after a spawn) keeps whatever ground contact there was.
    player.on_ground = (hit_y and dy < 0) or (dy == 0.0 and was_on_ground)
    if hit_x:
        player.vx = 0.0
    if hit_y:
        player.vy = 0.0
    if hit_z:
        player.vz = 0.0

    if player.in_water:
        player.vx *= WATER_DRAG
        player.vz *= WATER_DRAG
        player.vy = player.vy * WATER_DRAG - WATER_GRAVITY
        if action["jump"] and (hit_x or hit_z):
            player.vy = WATER_EXIT_VELOCITY
    else:
        drag = GROUND_DRAG if was_on_ground else AIR_DRAG
        player.vx *= drag
        player.vz *= drag
        player.vy = (player.vy - GRAVITY) * VERTICAL_DRAG
    player.in_water = in_water(world, player)
