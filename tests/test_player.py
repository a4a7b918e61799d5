"""Player physics and hands: collisions, jump, speeds, sneaking at edges, water, targeting, breaking, placing.

Every test builds its own little stage out of blocks high in the sky (above any terrain), so the results do
not depend on the terrain generator.
"""
import math

import pytest

from worldsim.engine import actions
from worldsim.engine.blocks import AIR, BEDROCK, BREAK_TICKS, DEFAULT_HOTBAR, DIRT, STONE, WATER
from worldsim.engine.env import EngineConfig, Simulation
from worldsim.engine.interact import USE_REPEAT_TICKS
from worldsim.engine.player import EYE_HEIGHT, HALF_WIDTH, Player
from worldsim.engine.raycast import raycast
from worldsim.engine.worldgen import MAX_TERRAIN, TREE_TOP

FLOOR = MAX_TERRAIN + TREE_TOP + 5  # stage floor blocks, above every mountain and tree; feet at FLOOR + 1
FEET = FLOOR + 1
CONFIG = EngineConfig(width=32, height=32, view_distance=16)


@pytest.fixture(scope="module")
def base_state():
    return Simulation(CONFIG, seed=5).get_state()


def stage(base_state, floor_cells, blocks=(), at=(0.5, FEET, 0.5), yaw=0.0, pitch=0.0) -> Simulation:
    """A simulation with a floor of stone under `floor_cells` (x, z), extra (x, y, z, block), the player at `at`."""
    edits = [(x, FLOOR, z, STONE) for x, z in floor_cells] + list(blocks)
    player = Player(*at, yaw=yaw, pitch=pitch)
    return Simulation.from_state(CONFIG, {**base_state, "player": player.to_dict(), "edits": edits})


def cells(x0, x1, z0, z1):
    return [(x, z) for x in range(x0, x1 + 1) for z in range(z0, z1 + 1)]


def run(sim: Simulation, n: int, **keys) -> list[tuple[float, float, float]]:
    action = actions.validate(keys)
    positions = []
    for _ in range(n):
        sim.step(action)
        positions.append((sim.player.x, sim.player.y, sim.player.z))
    return positions


def test_walking_into_a_wall_for_two_seconds_does_not_pass_through(base_state):
    wall = [(x, y, 5, STONE) for x in range(-3, 4) for y in (FEET, FEET + 1, FEET + 2)]
    sim = stage(base_state, cells(-3, 3, -3, 10), wall)
    path = run(sim, 40, forward=1, sprint=1)  # yaw 0 walks along +z
    assert max(z for _, _, z in path) <= 5 - HALF_WIDTH + 1e-6
    assert path[-1][2] == pytest.approx(5 - HALF_WIDTH, abs=1e-6)  # it did reach the wall
    path = run(sim, 40, forward=1, jump=1, camera=[0, 30.0])  # jumping and turning along it: still stopped
    assert all(z <= 5 - HALF_WIDTH + 1e-6 for _, _, z in path)


def test_jump_height_and_landing(base_state):
    sim = stage(base_state, cells(-2, 2, -2, 2))
    run(sim, 2)
    assert sim.player.on_ground and sim.player.y == pytest.approx(FEET)
    path = run(sim, 1, jump=1) + run(sim, 20)
    apex = max(y for _, y, _ in path) - FEET
    assert apex == pytest.approx(1.25, abs=0.01)
    assert sim.player.on_ground and sim.player.y == pytest.approx(FEET, abs=1e-6)
    assert sum(y > FEET + 1e-6 for _, y, _ in path) == 11  # back on the ground on the 12th tick: 0.6 s


def test_jump_onto_one_block_but_not_two(base_state):
    step = [(x, FEET, z, STONE) for x in range(-2, 3) for z in range(3, 8)]
    sim = stage(base_state, cells(-2, 2, -2, 8), step)
    run(sim, 30, forward=1, jump=1)
    run(sim, 10, forward=1)
    assert sim.player.y == pytest.approx(FEET + 1) and sim.player.z > 3.5
    two_high = step + [(x, FEET + 1, z, STONE) for x, _, z, _ in step]
    sim = stage(base_state, cells(-2, 2, -2, 8), two_high)
    run(sim, 30, forward=1, jump=1)
    assert sim.player.z < 3


@pytest.mark.parametrize("keys, speed", [({}, 4.317), ({"sprint": 1}, 5.612), ({"sneak": 1}, 1.295)])
def test_ground_speed(base_state, keys, speed):
    sim = stage(base_state, cells(-2, 2, -2, 20))
    path = run(sim, 40, forward=1, **keys)
    measured = (path[-1][2] - path[19][2]) / 1.0  # the last 20 ticks = 1 s, after accelerating
    assert measured == pytest.approx(speed, abs=0.01)
    assert all(y == pytest.approx(FEET) for _, y, _ in path)


def test_diagonal_is_not_faster(base_state):
    sim = stage(base_state, cells(-20, 20, -20, 20))
    path = run(sim, 40, forward=1, left=1)
    (x0, _, z0), (x1, _, z1) = path[19], path[-1]
    assert math.hypot(x1 - x0, z1 - z0) == pytest.approx(4.317, abs=0.01)
    assert x1 > x0 and z1 > z0  # left of +z is +x


def test_sneaking_never_walks_off_an_edge(base_state):
    sim = stage(base_state, cells(-2, 2, -2, 4))  # the floor ends at z = 5
    path = run(sim, 80, forward=1, sneak=1)
    assert all(y == pytest.approx(FEET) for _, y, _ in path)
    assert 5.0 <= path[-1][2] < 5.0 + HALF_WIDTH  # leaning out over the edge, still standing on it
    sim = stage(base_state, cells(-2, 2, -2, 4), at=(2.5, FEET, 4.5), yaw=-45)  # diagonally towards the corner
    path = run(sim, 80, forward=1, sneak=1)
    assert all(y == pytest.approx(FEET) for _, y, _ in path)
    sim = stage(base_state, cells(-2, 2, -2, 4))
    assert run(sim, 40, forward=1)[-1][1] < FEET - 1  # without sneaking it walks off and falls


def test_pitch_is_clamped_and_yaw_wraps(base_state):
    sim = stage(base_state, cells(-1, 1, -1, 1))
    run(sim, 2, camera=[80.0, 100.0])
    assert sim.player.pitch == 90.0 and sim.player.yaw == -160.0
    run(sim, 3, camera=[-170.0, 0.0])
    assert sim.player.pitch == -90.0


def test_water_slows_sinks_and_swims_up(base_state):
    pool = [(x, y, z, WATER) for x in range(-3, 4) for z in range(-3, 12) for y in range(FEET, FEET + 4)]
    sim = stage(base_state, cells(-3, 3, -3, 11), pool, at=(0.5, FEET + 2, 0.5))
    run(sim, 1)
    assert sim.player.in_water
    run(sim, 40)
    assert sim.player.y == pytest.approx(FEET) and sim.player.on_ground  # sank to the bottom
    path = run(sim, 40, forward=1)
    assert 1.5 < path[-1][2] - path[19][2] < 2.5  # about 2 blocks/s, against 4.3 on land
    run(sim, 30, jump=1)
    assert sim.player.y > FEET + 2.5  # swam up to the surface


def test_raycast_finds_the_block_and_face(base_state):
    sim = stage(base_state, cells(-2, 2, -2, 8), [(0, FEET + 1, 3, DIRT)])
    eye = (0.5, FEET + EYE_HEIGHT, 0.5)
    hit = raycast(sim.world, eye, actions.look_direction(0.0, 0.0))
    assert hit.block == (0, FEET + 1, 3) and hit.normal == (0, 0, -1)
    hit = raycast(sim.world, eye, actions.look_direction(0.0, 90.0))
    assert hit.block == (0, FLOOR, 0) and hit.normal == (0, 1, 0)
    assert raycast(sim.world, eye, actions.look_direction(180.0, 0.0)) is None  # open sky
    far = stage(base_state, cells(-2, 2, -2, 8), [(0, FEET + 1, 6, DIRT)])
    assert raycast(far.world, eye, actions.look_direction(0.0, 0.0)) is None  # 5.5 blocks: out of reach


def test_breaking_takes_the_block_break_ticks(base_state):
    sim = stage(base_state, cells(-2, 2, -2, 4), [(0, FEET + 1, 2, DIRT)])
    target = (0, FEET + 1, 2)
    attack = actions.validate({"attack": 1})
    stages = []
    for _ in range(BREAK_TICKS[DIRT] - 1):
        sim.step(attack)
        stages.append(sim.view().crack_stage)
    assert sim.world.get_block(*target) == DIRT
    assert stages == sorted(stages) and stages[0] == 1 and stages[-1] == 9
    sim.step(attack)
    assert sim.world.get_block(*target) == AIR and sim.edits == [(*target, DIRT, AIR)]
    assert sim.view().crack_stage == -1


def test_releasing_or_retargeting_restarts_breaking(base_state):
    left, right = (0, FEET + 1, 2), (1, FEET + 1, 2)
    sim = stage(base_state, cells(-2, 2, -2, 4), [(*left, DIRT), (*right, DIRT)])
    n = int(BREAK_TICKS[DIRT])
    run(sim, n - 1, attack=1)
    run(sim, 1)  # released for one tick
    run(sim, n - 1, attack=1)
    assert sim.world.get_block(*left) == DIRT
    run(sim, 1, attack=1, camera=[0, -30.0])  # now aiming at the block on +x
    assert sim.hit.block == right
    run(sim, n - 2, attack=1)
    assert sim.world.get_block(*left) == DIRT and sim.world.get_block(*right) == DIRT
    run(sim, 1, attack=1)
    assert sim.world.get_block(*right) == AIR


def test_bedrock_never_breaks(base_state):
    sim = stage(base_state, cells(-2, 2, -2, 4), [(0, FEET + 1, 2, BEDROCK)])
    run(sim, 100, attack=1)
    assert sim.world.get_block(0, FEET + 1, 2) == BEDROCK


def test_use_places_the_selected_block_on_the_face(base_state):
    sim = stage(base_state, cells(-2, 2, -2, 4), [(0, FEET + 1, 3, DIRT)])
    run(sim, 1, use=1, **{"hotbar.3": 1})
    assert sim.player.selected_slot == 2
    assert sim.world.get_block(0, FEET + 1, 2) == DEFAULT_HOTBAR[2]
    assert sim.edits == [(0, FEET + 1, 2, AIR, DEFAULT_HOTBAR[2])]
    placed = []  # held, it places again after USE_REPEAT_TICKS ticks (against the new block)
    for _ in range(USE_REPEAT_TICKS):
        run(sim, 1, use=1)
        placed.append(bool(sim.edits))
    assert placed == [False] * (USE_REPEAT_TICKS - 1) + [True]
    assert sim.world.get_block(0, FEET + 1, 1) == DEFAULT_HOTBAR[2]


def test_place_never_inside_the_player(base_state):
    sim = stage(base_state, cells(-2, 2, -2, 2), pitch=90.0)  # looking straight down at the floor
    run(sim, 1)
    assert sim.hit.block == (0, FLOOR, 0) and sim.hit.normal == (0, 1, 0)
    run(sim, 20, use=1)
    assert sim.world.get_block(0, FEET, 0) == AIR
    assert sorted(sim.world.get_edits()) == [(x, FLOOR, z, STONE) for x, z in cells(-2, 2, -2, 2)]
    # Aiming at the side of a block across a cell the box reaches into: refused; a step back, allowed.
    wall = [(2, FEET, 0, DIRT)]
    sim = stage(base_state, cells(-2, 2, -2, 2), wall, at=(0.9, FEET, 0.5), yaw=-90.0, pitch=45.0)
    run(sim, 1, use=1)
    assert sim.hit.block == (2, FEET, 0) and sim.hit.normal == (-1, 0, 0)
    assert sim.edits == [] and sim.world.get_block(1, FEET, 0) == AIR
    sim = stage(base_state, cells(-2, 2, -2, 2), wall, at=(0.5, FEET, 0.5), yaw=-90.0, pitch=45.0)
    run(sim, 1, use=1)
    assert sim.edits == [(1, FEET, 0, AIR, DEFAULT_HOTBAR[0])]
