"""Two evaluation reports of the same prompts side by side: which world is ahead, horizon by horizon.

    python -m worldsim.eval.compare runs/eval_new/report.json eval/model/report.json [--json compare.json]

Fidelity: the paired difference A − B of PSNR and SSIM per horizon over the prompts both reports scored, with
its standard error over worlds and a verdict (metrics.paired_difference, as each report's own difference from
copy-last). Pairing needs the same prompts: reports whose prompts (world seed and first tick) or horizons
differ are refused. Beside it, each report's action following (generated / real accuracy per group), its
consistency end frames and its stability (runs that collapsed, and each run's lowest one-second contrast).
"""
import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from worldsim.eval import metrics


def load_report(path) -> dict:
    """An eval report.json, or a clear error naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no eval report at {path} (mode=eval writes eval.out_dir/report.json)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a JSON eval report: {error}") from None
    if not isinstance(report, dict) or "fidelity" not in report or "values" not in report.get("fidelity", {}):
        raise ValueError(f"{path} is not an eval report with per-prompt values (fidelity.values)")
    return report


def _stability(report: dict) -> dict:
    """Runs and collapses, for reports of one long run (format 1) and of several."""
    stability = report.get("stability") or {}
    runs = stability.get("runs")
    if runs is None:  # format 1: one run, its verdict at the top
        runs = [{"seed": None, "collapse": stability.get("collapse", {})}] if stability else []
    lowest = [r["collapse"].get("lowest_contrast_1s", {}) for r in runs]
    return {"runs": len(runs), "collapsed_runs": sum(bool(r["collapse"].get("collapsed")) for r in runs),
            "lowest_contrast_1s": [c.get("candidate") for c in lowest], "fade_limit": [c.get("limit") for c in lowest],
            "seconds_before": [r["collapse"].get("seconds_before") for r in runs],  # None: a report before it
            "contrast_ratio": [r["collapse"].get("mean_contrast", {}).get("ratio") for r in runs],
            # None: a report from before the washed-out rule, whose verdicts did not judge it
            "lowest_ratio_10s": [r["collapse"].get("lowest_contrast_ratio_10s", {}).get("candidate") for r in runs]}


def compare(a: dict, b: dict) -> dict:
    """A against B: fidelity differences per metric and horizon, and both reports' other measures."""
    prompts = lambda r: [(p["seed"], p["first_tick"]) for p in r["fidelity"]["prompts"]]
    if prompts(a) != prompts(b):
        raise ValueError(f"the reports scored different prompts ({len(prompts(a))} and {len(prompts(b))}, or other "
                         "worlds or ticks): a paired comparison needs the same eval.seed, episodes, "
                         "prompts_per_world, warmup_frames, prompt_frames and horizons")
    if a["fidelity"]["horizons"] != b["fidelity"]["horizons"]:
        raise ValueError(f"the reports' horizons differ: {a['fidelity']['horizons']} and {b['fidelity']['horizons']}")
    seeds = [seed for seed, _ in prompts(a)]
    values = lambda r, metric, h: r["fidelity"]["values"]["candidate"][metric][str(h)]
    horizons = a["fidelity"]["horizons"]
    fidelity = {metric: {str(h): {"a": sum(values(a, metric, h)) / len(seeds), "b": sum(values(b, metric, h)) / len(seeds),
                                  **metrics.paired_difference(values(a, metric, h), values(b, metric, h), seeds)}
                         for h in horizons} for metric in ("psnr", "ssim")}
    relative = lambda r: {g: (v or {}).get("accuracy") for g, v in r["action_following"]["relative"].items()}
    end = lambda r: {t: v["candidate_vs_engine"]["psnr"] for t, v in r["consistency"].items()}
    return {"prompts": len(seeds), "worlds": len(set(seeds)), "horizons": horizons, "fidelity": fidelity,
            "action_following": {"a": relative(a), "b": relative(b)},
            "consistency_end_psnr": {"a": end(a), "b": end(b)},
            "stability": {"a": _stability(a), "b": _stability(b)}}


def _fmt(value, digits=2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_comparison(result: dict, names: tuple[str, str], console: Console | None = None) -> None:
    console = console or Console()
    a, b = names
    table = Table(title=f"A = {a}\nB = {b}\n{result['prompts']} prompts in {result['worlds']} worlds: "
                        "A − B paired, ± standard error over worlds")
    table.add_column("metric")
    for h in result["horizons"]:
        table.add_column(f"t+{h}", justify="right")
    for metric, digits in (("psnr", 2), ("ssim", 3)):
        cells = result["fidelity"][metric]
        table.add_row(f"{metric} A / B", *[f"{_fmt(cells[str(h)]['a'], digits)} / {_fmt(cells[str(h)]['b'], digits)}"
                                         for h in result["horizons"]])
        table.add_row(f"{metric} A − B", *[f"{cells[str(h)]['mean']:+.{digits}f} ± "
                                         f"{_fmt(cells[str(h)]['standard_error'], digits)} "
                                         f"{cells[str(h)]['verdict'] or ''}" for h in result["horizons"]])
    console.print(table)
    table = Table(title="Action following (generated / real accuracy), consistency (end PSNR dB), stability")
    for column in ("measure", "A", "B"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for group, value in result["action_following"]["a"].items():
        table.add_row(f"follow {group}", _fmt(value, 3), _fmt(result["action_following"]["b"].get(group), 3))
    for test, value in result["consistency_end_psnr"]["a"].items():
        table.add_row(test, _fmt(value, 1), _fmt(result["consistency_end_psnr"]["b"].get(test), 1))
    runs = lambda s: (f"{s['collapsed_runs']} of {s['runs']} collapsed; lowest 1-s contrast "
                      + ", ".join(f"{_fmt(c, 1)} (limit {_fmt(l, 1)})" for c, l in zip(s["lowest_contrast_1s"],
                                                                                      s["fade_limit"]))
                      + "; seconds before collapse " + ", ".join(_fmt(v, 1) for v in s["seconds_before"])
                      + "; mean contrast / real " + ", ".join(_fmt(v, 2) for v in s["contrast_ratio"])
                      + f"; lowest 10-s contrast / real (limit {metrics.FADE_FRACTION}) "
                      + ", ".join(_fmt(v, 2) for v in s["lowest_ratio_10s"]))
    table.add_row("stability", runs(result["stability"]["a"]), runs(result["stability"]["b"]))
    console.print(table)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="report.json (or its directory) of world A")
    parser.add_argument("b", help="report.json (or its directory) of world B, on the same prompts")
    parser.add_argument("--json", default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    try:
        result = compare(load_report(args.a), load_report(args.b))
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print_comparison(result, (args.a, args.b))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
