"""The evaluation's outputs: report.json (atomic), sheet.png (frames and plots, drawn with PIL), a rich table."""
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from worldsim.eval.metrics import STAT_NAMES

TILE = 128            # frames are scaled (nearest) to at least this many pixels wide on the sheet
PLOT_W, PLOT_H = 360, 180
MARGIN = 28
COLOURS = {"real": (60, 60, 60), "engine": (60, 60, 60), "candidate": (214, 39, 40), "copy_last": (31, 119, 180),
           "autoencoder": (44, 160, 44)}
TIMING_KEYS = ("timing",)  # fields that vary between identical runs


def write_report(report: dict, path) -> None:
    """The report as JSON, written to a temporary file and renamed, so a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(report, indent=1, allow_nan=False))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- sheet
def _tile(frame: np.ndarray) -> Image.Image:
    image = Image.fromarray(frame)
    scale = max(1, math.ceil(TILE / frame.shape[1]))
    return image.resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)


def _plot(draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str, lines: dict, x_labels=None) -> None:
    """Line plot in a PLOT_W × PLOT_H box: lines {name: list of y (None skipped)}, x evenly spaced."""
    x0, y0 = origin
    draw.rectangle([x0, y0, x0 + PLOT_W, y0 + PLOT_H], outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    values = [v for ys in lines.values() for v in ys if v is not None and math.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0
    draw.text((x0 - 26, y0), f"{high:.3g}", fill=(0, 0, 0))
    draw.text((x0 - 26, y0 + PLOT_H - 10), f"{low:.3g}", fill=(0, 0, 0))
    for k, (name, ys) in enumerate(lines.items()):
        n = max(len(ys) - 1, 1)
        points = [(x0 + 4 + (PLOT_W - 8) * i / n, y0 + PLOT_H - 4 - (PLOT_H - 8) * (v - low) / (high - low))
                  for i, v in enumerate(ys) if v is not None and math.isfinite(v)]
        colour = COLOURS.get(name, (128, 0, 128))
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for p in points if len(points) < 16 else []:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        draw.text((x0 + PLOT_W - 90, y0 + 4 + 12 * k), name, fill=colour)
    for i, label in enumerate(x_labels or []):
        x = x0 + 4 + (PLOT_W - 8) * i / max(len(x_labels) - 1, 1)
        draw.text((x - 4, y0 + PLOT_H + 2), str(label), fill=(0, 0, 0))


def write_sheet(report: dict, arrays: dict, path) -> None:
    """Real frames over each world's frames at the horizons; the 360° turn, the engine's over the candidate's;
    PSNR and SSIM vs horizon; stability stats over time."""
    strip = {name: frames for name, frames in arrays["strip"].items() if len(frames)}
    horizons = report["fidelity"]["horizons"]
    tiles = {name: [_tile(f) for f in frames] for name, frames in strip.items()}
    turn = {name: [_tile(f) for f in frames] for name, frames in (arrays.get("turn") or {}).items()}
    tw, th = tiles["real"][0].size
    label_w = 90
    turn_top = 20 + len(tiles) * (th + 4)
    frames_h = turn_top + (20 + len(turn) * (th + 4) if turn else 0)
    plots_top = frames_h + 30
    stats_top = plots_top + PLOT_H + 50
    stat_rows = math.ceil(len(STAT_NAMES) / 2)
    width = max(label_w + max([len(horizons)] + [len(t) for t in turn.values()]) * (tw + 4),
                2 * (PLOT_W + 2 * MARGIN) + MARGIN)
    height = stats_top + stat_rows * (PLOT_H + 40) + 10
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, h in enumerate(horizons):
        draw.text((label_w + i * (tw + 4), 4), f"t+{h}", fill=(0, 0, 0))

    def rows(named_tiles: dict, top: int) -> None:
        for row, (name, images) in enumerate(named_tiles.items()):
            y = top + row * (th + 4)
            draw.text((4, y + th // 2), report["candidate"] if name == "candidate" else name, fill=COLOURS.get(name))
            for i, image in enumerate(images):
                sheet.paste(image, (label_w + i * (tw + 4), y))

    rows(tiles, 20)
    if turn:
        every = report["config"]["turn_degrees"] * arrays["turn_every"]
        draw.text((label_w, turn_top + 4), f"360° turn, every {every:g}° (consistency test, first world)",
                  fill=(0, 0, 0))
        rows(turn, turn_top + 20)
    worlds = {name: w for name, w in report["fidelity"]["worlds"].items() if w is not None}
    for k, metric in enumerate(("psnr", "ssim")):
        lines = {name: [w[metric][str(h)]["mean"] for h in horizons] for name, w in worlds.items()}
        _plot(draw, (MARGIN + k * (PLOT_W + 2 * MARGIN), plots_top), f"{metric} vs horizon (mean)", lines, horizons)
    stats = arrays["stats"]
    for j, name in enumerate(STAT_NAMES):
        origin = (MARGIN + (j % 2) * (PLOT_W + 2 * MARGIN), stats_top + (j // 2) * (PLOT_H + 40))
        lines = {key: _downsample(stats[key][:, j]) for key in ("real", "candidate")}
        _plot(draw, origin, f"{name} over {len(stats['real'])} frames (long run 1)", lines)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def _downsample(values: np.ndarray, points: int = PLOT_W) -> list:
    return [float(b.mean()) for b in np.array_split(values, min(len(values), points))] if len(values) else []


# ---------------------------------------------------------------------------------------------- table
def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_report(report: dict, console: Console | None = None) -> None:
    """Fidelity per horizon, action following per group, consistency, stability and speed as rich tables."""
    console = console or Console()
    horizons = report["fidelity"]["horizons"]
    prompts = len(report["fidelity"]["prompts"])
    table = Table(title=f"Fidelity of {report['candidate']} vs the engine over {prompts} prompts in "
                        f"{len(report['fidelity']['seeds'])} worlds: PSNR dB / SSIM, mean ± std (min)")
    table.add_column("world")
    for h in horizons:
        table.add_column(f"t+{h}", justify="right")
    for name, world in report["fidelity"]["worlds"].items():
        label = report["candidate"] if name == "candidate" else name
        if world is None:
            table.add_row(label, *["—"] * len(horizons))
            continue
        cells = []
        for h in horizons:
            p, s = world["psnr"][str(h)], world["ssim"][str(h)]
            cells.append(f"{_fmt(p['mean'], 1)} ± {_fmt(p['std'], 1)} ({_fmt(p['min'], 1)})\n"
                         f"{_fmt(s['mean'])} ± {_fmt(s['std'])} ({_fmt(s['min'])})")
        table.add_row(label, *cells)
    versus = report["fidelity"]["candidate_minus_copy_last"]
    cells = []
    for h in horizons:
        p, s = versus["psnr"][str(h)], versus["ssim"][str(h)]
        cells.append(f"{p['mean']:+.2f} ± {_fmt(p['standard_error'], 2)} {p['verdict'] or ''}\n"
                     f"{s['mean']:+.3f} ± {_fmt(s['standard_error'])} {s['verdict'] or ''}")
    table.add_row("candidate − copy_last\n(± standard error over worlds)", *cells)
    console.print(table)

    follow = report["action_following"]
    table = Table(title="Action following: IDM accuracy (balanced) on real and generated pairs")
    for column in ("group", "real", "generated", "generated / real"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group, rel in follow["relative"].items():
        cell = lambda r: "—" if r is None else (f"{_fmt(r['groups'][group]['accuracy'])} "
                                                f"({_fmt(r['groups'][group]['balanced_accuracy'])})")
        ratio = "—" if rel is None else f"{_fmt(rel['accuracy'])} ({_fmt(rel['balanced_accuracy'])})"
        table.add_row(group, cell(follow["real"]), cell(follow["generated"]), ratio)
    console.print(table)

    table = Table(title="Consistency: PSNR dB / SSIM")
    for column in ("test", "ticks", "end: candidate vs engine", "every tick: candidate vs engine",
                   "candidate end vs start", "engine end vs start"):
        table.add_column(column, justify="left" if column == "test" else "right")
    for name, result in report["consistency"].items():
        pair = lambda key: f"{_fmt(result[key]['psnr'], 1)} / {_fmt(result[key]['ssim'])}"
        table.add_row(name + (" (crosshair)" if result["crosshair_only"] else ""), str(result["ticks"]),
                      pair("candidate_vs_engine"), pair("candidate_vs_engine_every_tick"), pair("candidate_end_vs_start"),
                      pair("engine_end_vs_start"))
    console.print(table)

    stability = report["stability"]
    c = stability["collapse"]
    verdict = (f"[red]{c['collapsed_runs']} of {c['runs']} collapsed[/red] (frozen {c['frozen_runs']}, faded "
               f"{c['faded_runs']})") if c["collapsed"] else f"[green]none of {c['runs']} collapsed[/green]"
    held = c.get("seconds_before") or {}
    if held.get("mean") is not None:
        verdict += f"; seconds of play before it: mean {_fmt(held['mean'], 1)}, least {_fmt(held['min'], 1)}"
    ratio = c.get("contrast_ratio") or {}
    if ratio.get("mean") is not None:
        verdict += f"; mean contrast {_fmt(ratio['mean'], 2)} of the real runs'"
    table = Table(title=f"Stability over {c['runs']} runs of {stability['frames']} frames: {verdict}")
    for column in ("world", "verdict", "seconds before", "longest still stretch (real, limit)",
                   "lowest 1-s contrast (real, limit)", "lowest 10-s contrast of real's (limit)",
                   "fraction out of range"):
        table.add_column(column, justify="left" if column in ("world", "verdict") else "right")
    for run in stability["runs"]:
        r = run["collapse"]
        still, contrast = r["longest_still_frames"], r["lowest_contrast_1s"]
        washed = r.get("lowest_contrast_ratio_10s", {})  # reports before it have none
        kinds = [k + (" (washed out)" if k == "faded" and r.get("washed_out") else "") for k in ("frozen", "faded")
                 if r[k]]
        table.add_row(str(run["seed"]), " and ".join(kinds) or "no collapse",
                      _fmt(r.get("seconds_before"), 1), f"{still['candidate']} ({still['real']}, {_fmt(still['limit'], 0)})",
                      f"{_fmt(contrast['candidate'], 1)} ({_fmt(contrast['real'], 1)}, {_fmt(contrast['limit'], 1)})",
                      f"{_fmt(washed.get('candidate'))} ({_fmt(washed.get('limit'))})", _fmt(run["fraction_out_of_range"]))
    console.print(table)
    table = Table(title=f"Stability: candidate statistics vs the real range, pooled over the runs "
                        f"(first out of range: {stability['first_out_of_range']}, "
                        f"fraction out: {_fmt(stability['fraction_out_of_range'])})")
    for column in ("statistic", "real range", "candidate range", "fraction out", "first out"):
        table.add_column(column, justify="left" if column == "statistic" else "right")
    for name, s in stability["stats"].items():
        table.add_row(name, f"{_fmt(s['real_min'], 2)} … {_fmt(s['real_max'], 2)}",
                      f"{_fmt(s['candidate_min'], 2)} … {_fmt(s['candidate_max'], 2)}",
                      _fmt(s["fraction_out_of_range"]), str(s["first_out_of_range"]))
    console.print(table)
    speed = ", ".join(f"{name} {_fmt(fps, 1)}" for name, fps in report["timing"]["fps"].items())
    batched = ", ".join(f"{name} {_fmt(fps, 1)}" for name, fps in report["timing"]["batch_fps"].items()
                        if fps is not None)
    console.print(f"frames/s one at a time: {speed}" + (f"; in fidelity's batches of {report['timing']['batch_size']}: "
                                                        f"{batched}" if batched else ""))
    for note in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
