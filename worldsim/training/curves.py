"""Loss curves: a CSV that survives resume (rows after the resumed step are dropped) and a PNG drawn with PIL."""
import csv
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

PANEL_W, PANEL_H, MARGIN = 360, 200, 44  # pixels of one chart and of the room left for its labels
LINE = (31, 119, 180)


class CurveLog:
    """Rows {"step": int, name: float, ...} appended to a CSV; the header grows when a new column appears."""

    def __init__(self, path, resume_step: int):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [_parse(row) for row in csv.DictReader(f)]
            self.rows = [row for row in self.rows if row["step"] <= resume_step]
        self.columns = list(dict.fromkeys(k for row in self.rows for k in row)) or ["step"]
        self._rewrite()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if set(row) - set(self.columns):
            self.columns += [k for k in row if k not in self.columns]
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    def plot(self, path) -> None:
        """Draw one chart per column against the step into a PNG."""
        plot_curves(self.rows, [c for c in self.columns if c != "step"], path)


def _parse(row: dict) -> dict:
    out = {"step": int(row["step"])}
    for key, value in row.items():
        if key != "step" and value not in ("", None):
            out[key] = float(value)
    return out


def plot_curves(rows: list[dict], columns: list[str], path) -> None:
    """A PNG with one line chart per column (log scale where every value is positive)."""
    columns = columns or ["loss"]
    per_row = 2
    n_rows = math.ceil(len(columns) / per_row)
    image = Image.new("RGB", (per_row * (PANEL_W + MARGIN) + MARGIN, n_rows * (PANEL_H + MARGIN) + MARGIN // 2),
                      "white")
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(columns):
        x0 = MARGIN + (i % per_row) * (PANEL_W + MARGIN)
        y0 = MARGIN // 2 + (i // per_row) * (PANEL_H + MARGIN)
        points = [(r["step"], r[name]) for r in rows if name in r and math.isfinite(r[name])]
        _panel(draw, (x0, y0), name, points)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    image.save(tmp)
    os.replace(tmp, path)


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], name: str, points: list[tuple[int, float]]) -> None:
    x0, y0 = origin
    draw.rectangle([x0, y0, x0 + PANEL_W, y0 + PANEL_H], outline="black")
    log_scale = bool(points) and all(v > 0 for _, v in points)
    draw.text((x0 + 4, y0 + 2), name + (" (log)" if log_scale else ""), fill="black")
    if not points:
        return
    ys = [math.log10(v) if log_scale else v for _, v in points]
    s_min, s_max = points[0][0], max(points[-1][0], points[0][0] + 1)
    y_min, y_max = min(ys), max(ys)
    y_max = y_max if y_max > y_min else y_min + 1.0
    xy = [(x0 + (s - s_min) / (s_max - s_min) * PANEL_W, y0 + PANEL_H - (y - y_min) / (y_max - y_min) * PANEL_H)
          for (s, _), y in zip(points, ys)]
    draw.line(xy, fill=LINE, width=2) if len(xy) > 1 else draw.point(xy, fill=LINE)
    label = (lambda y: f"{10 ** y:.3g}") if log_scale else (lambda y: f"{y:.3g}")
    draw.text((x0 - MARGIN + 2, y0), label(y_max), fill="black")
    draw.text((x0 - MARGIN + 2, y0 + PANEL_H - 10), label(y_min), fill="black")
    draw.text((x0, y0 + PANEL_H + 2), str(s_min), fill="black")
    draw.text((x0 + PANEL_W - 40, y0 + PANEL_H + 2), str(s_max), fill="black")
