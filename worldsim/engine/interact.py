"""Hands: hotbar selection, breaking the targeted block by holding attack, placing blocks with use.

The inventory is creative: every hotbar slot holds an endless stack of its block.
"""
from worldsim.engine.actions import look_direction
from worldsim.engine.blocks import AIR, BREAK_TICKS, WATER
from worldsim.engine.player import EPS, Player
from worldsim.engine.raycast import Hit, raycast

HOTBAR_SLOTS = 9
# Holding use places a block at once and then every USE_REPEAT_TICKS ticks (Minecraft's right-click delay),
# not twenty blocks a second.
USE_REPEAT_TICKS = 4
CRACK_STAGES = 10  # the overlay's stages 0..9
REPLACEABLE = (AIR, WATER)

Edit = tuple[int, int, int, int, int]  # (x, y, z, old block, new block)


def select_slot(player: Player, action: dict) -> None:
    """hotbar.1–9 select slots 0–8; when several are pressed the lowest number wins."""
    for i in range(HOTBAR_SLOTS):
        if action[f"hotbar.{i + 1}"]:
            player.selected_slot = i
            return


def target(world, player: Player) -> Hit | None:
    """The block under the crosshair, within reach."""
    return raycast(world, player.eye, tuple(look_direction(player.yaw, player.pitch)))


def crack_stage(world, player: Player, hit: Hit | None) -> int:
    """The crack overlay stage 0..9 of the targeted block while it is being broken, else -1."""
    if hit is None or player.break_progress <= 0 or player.break_target != hit.block:
        return -1
    ticks = int(BREAK_TICKS[world.get_block(*hit.block)])
    if ticks <= 0:
        return -1
    return min(CRACK_STAGES - 1, player.break_progress * CRACK_STAGES // ticks)


def _attack(world, player: Player, held: bool, hit: Hit | None) -> list[Edit]:
    """Count ticks of attack held on one block; break it after BREAK_TICKS. Any change of target restarts."""
    if not held or hit is None:
        player.break_target, player.break_progress = None, 0
        return []
    block = world.get_block(*hit.block)
    if BREAK_TICKS[block] < 0:  # unbreakable
        player.break_target, player.break_progress = None, 0
        return []
    if player.break_target == hit.block:
        player.break_progress += 1
    else:
        player.break_target, player.break_progress = hit.block, 1
    if player.break_progress < BREAK_TICKS[block]:
        return []
    world.set_block(*hit.block, AIR)
    player.break_target, player.break_progress = None, 0
    return [(*hit.block, block, AIR)]


def _overlaps_player(player: Player, cell) -> bool:
    lo, hi = player.box()
    return all(c < h - EPS and c + 1 > l + EPS for c, l, h in zip(cell, lo, hi))


def _use(world, player: Player, held: bool, hit: Hit | None, hotbar) -> list[Edit]:
    """Place the selected block against the targeted face: into air or water, never into the player's box."""
    if not held:
        player.use_cooldown = 0
        return []
    if player.use_cooldown > 0:
        player.use_cooldown -= 1
        if player.use_cooldown > 0:
            return []
    player.use_cooldown = USE_REPEAT_TICKS
    if hit is None:
        return []
    cell = tuple(b + n for b, n in zip(hit.block, hit.normal))
    if not 0 <= cell[1] < world.height or _overlaps_player(player, cell):
        return []
    old = world.get_block(*cell)
    if old not in REPLACEABLE:
        return []
    new = int(hotbar[player.selected_slot])
    world.set_block(*cell, new)
    return [(*cell, old, new)]


def interact(world, player: Player, action: dict, hotbar) -> list[Edit]:
    """Attack and use on the block targeted from where the player now stands; returns the edits made."""
    hit = target(world, player)
    edits = _attack(world, player, bool(action["attack"]), hit)
    if edits:  # the target just broke: use aims at whatever is behind it
        hit = target(world, player)
    return edits + _use(world, player, bool(action["use"]), hit, hotbar)
