"""The `rmbandit` command: a thin dispatcher over subcommands."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm
    return lambda name: (lambda it: tqdm(it, desc=f"{name:24s}", leave=False, unit="batch"))


def format_table(results: dict) -> str:
    cfg = results["config"]
    lines = [f"{'router':24s} {'accuracy':>8s} {'regret':>8s} {'RM calls':>9s} {'sec':>6s}  most-used RM per category"]
    for r in results["routers"]:
        if r["rm_calls"] > cfg["pairs"]:
            used = f"every RM labels every pair ({r['rm_calls'] // cfg['pairs']} calls per pair)"
        else:
            used = "; ".join(
                f"{cat}: {cfg['rm_names'][max(range(len(row)), key=row.__getitem__)]} {100 * max(row):.0f}%"
                for cat, row in zip(cfg["categories"], r["utilisation"]))
        lines.append(f"{r['router']:24s} {r['accuracy']:8.3f} {r['final_regret']:8.1f} {r['rm_calls']:9d} "
                     f"{r['seconds']:6.1f}  {used}")
    return "\n".join(lines)


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cfg, routers = results["config"], results["routers"]
    fig, (curves, heat) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.4, 1]})
    for r in routers:
        y = np.asarray(r["regret_curve"])
        curves.plot(np.linspace(0, cfg["pairs"], len(y)), y, label=r["router"])
    curves.set(xlabel="pairs labelled", ylabel="cumulative expected regret", title="Regret vs the best RM per pair")
    curves.legend(fontsize=8)
    learned = [r for r in routers if r["router"] not in ("best_single_rm", "majority_vote")] or routers
    best = min(learned, key=lambda r: r["final_regret"])
    im = heat.imshow(np.asarray(best["utilisation"]), vmin=0, vmax=1, cmap="viridis")
    heat.set(xticks=range(len(cfg["rm_names"])), yticks=range(len(cfg["categories"])),
             title=f"RM utilisation per category: {best['router']}")
    heat.set_xticklabels(cfg["rm_names"], rotation=30, ha="right")
    heat.set_yticklabels(cfg["categories"])
    fig.colorbar(im, ax=heat, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_simulate(args) -> int:
    from rmbandit import simulate
    routers = tuple(r for r in args.routers.split(",") if r) if args.routers else None
    try:
        results = simulate.simulate(seed=args.seed, pairs=args.pairs, batch_size=args.batch_size, dim=args.dim,
                                    granularity=args.granularity, routers=routers, progress=_progress(args.quiet))
    except ValueError as err:
        print(f"rmbandit simulate: error: {err}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "regret.png")
    cfg = results["config"]
    print(f"{cfg['pairs']} pairs, {len(cfg['rm_names'])} RMs, {cfg['granularity']} routing, seed {cfg['seed']}")
    print(format_table(results))
    print(f"wrote {out / 'results.json'} and {out / 'regret.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmbandit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="controlled routing simulation with simulated reward models")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--pairs", type=int, default=4096)
    sim.add_argument("--batch-size", type=int, default=64)
    sim.add_argument("--dim", type=int, default=32)
    sim.add_argument("--granularity", choices=("item", "batch"), default="item",
                     help="item: one RM per pair (BayesianRouter); batch: one RM per batch (LASeR)")
    sim.add_argument("--routers", default="", help="comma-separated subset (default: all)")
    sim.add_argument("--out", default="runs/simulate")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=cmd_simulate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
