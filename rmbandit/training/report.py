"""What a training run leaves behind to be watched and read: one metrics row per batch
(``metrics.jsonl`` + TensorBoard scalars), the plots, and ``summary.json``.

A row is a flat dict such as ``{"step": 7, "iteration": 1, "batch": 3, "category": "arithmetic",
"rm": "numeric-verifier", "rm_pairs": {"numeric-verifier": 10, ...}, "loss": 0.69,
"bandit_reward": 0.4, "pairs": 10, "skipped": false, "time_sample": 1.2, ..., "time_batch": 3.6}``;
``step`` is the global batch index from 0.  A skipped batch (no preference pair) has
``skipped: true``, ``pairs: 0`` and ``loss`` / ``bandit_reward`` null.

Everything here is NumPy / matplotlib / tensorboardX: no jax, so a finished run can be
reported on without an accelerator.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
import tempfile
import time
import warnings

import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "summary.json"
MIXED = "mixed"                 # the category (or rm) of a batch whose pairs span several


# --- metrics.jsonl + TensorBoard ---------------------------------------------------------------

def _json_default(value):
    """NumPy scalars and arrays (what a training loop hands over) as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"metrics row value {value!r} of type {type(value).__name__} is not JSON-serialisable; "
                    "log numbers, strings, bools, None, lists or dicts")


def _scalars(row: dict):
    """(tag, value) for each number in a row: bools as 0/1, ``time_x`` as ``time/x``,
    a dict of numbers (``rm_pairs``) as ``field/key``; ``step`` is the x axis, not a scalar."""
    for field, value in row.items():
        if field == "step":
            continue
        tag = f"time/{field[len('time_'):]}" if field.startswith("time_") else field
        if isinstance(value, dict):
            for key, inner in value.items():
                if isinstance(inner, (numbers.Real, np.bool_)):
                    yield f"{tag}/{key}", float(inner)
        elif isinstance(value, (numbers.Real, np.bool_)):
            yield tag, float(value)


def _parse_lines(path: pathlib.Path, data: bytes) -> list[tuple[bytes, dict]]:
    """(raw line with its newline, parsed row) per line of a metrics file.  A last line that
    does not parse (a run killed while writing it) is dropped with a warning; any other bad
    line raises ValueError naming the file and line."""
    lines = data.splitlines(keepends=True)
    out = []
    for number, raw in enumerate(lines, 1):
        last = number == len(lines)
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as err:           # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            if last:
                warnings.warn(f"{path}: line {number} is incomplete (the run was stopped while writing "
                              f"it); skipping it", stacklevel=3)
                break
            raise ValueError(f"{path}: line {number} is not a metrics row ({err}); only the last line may be "
                             f"incomplete, so the file was damaged: fix or delete line {number}") from None
        out.append((raw if raw.endswith(b"\n") else raw + b"\n", row))
    return out


def read_metrics(path) -> list[dict]:
    """The rows of a ``metrics.jsonl``, in file order (a truncated last line is skipped with a
    warning; a damaged line elsewhere raises ValueError naming the file and line number)."""
    path = pathlib.Path(path)
    return [row for _, row in _parse_lines(path, path.read_bytes())]


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a kill leaves either the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _check_resume_step(resume_step) -> None:
    if resume_step is None:
        return
    if isinstance(resume_step, bool) or not isinstance(resume_step, numbers.Integral) or resume_step < 0:
        raise ValueError(f"resume_step must be None (a fresh run) or the non-negative step the run restarts "
                         f"from, got {resume_step!r}")


class MetricsLog:
    """Per-batch metrics of one run: appended to ``run_dir/metrics.jsonl`` (flushed and fsynced
    per row) and written as TensorBoard scalars under ``run_dir/tensorboard``.

    ``resume_step=None`` starts a fresh run (an existing metrics.jsonl is emptied, earlier
    TensorBoard points are hidden).  ``resume_step=s`` continues a run restored from the
    checkpoint taken after batch ``s - 1``: rows with ``step >= s`` (and a line cut short by a
    kill) are dropped, so once the re-run writes them again the file is byte for byte the one
    an uninterrupted run writes; TensorBoard hides its points at steps >= s (``purge_step``).
    """

    def __init__(self, run_dir, resume_step: int | None = None):
        from tensorboardX import SummaryWriter

        _check_resume_step(resume_step)
        self.run_dir = pathlib.Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kept = b""
        if resume_step is not None and self.path.exists():
            rows = _parse_lines(self.path, self.path.read_bytes())
            for number, (_, row) in enumerate(rows, 1):
                if not isinstance(row.get("step"), int):
                    raise ValueError(f"{self.path}: line {number} has no integer 'step' "
                                     f"(got {row.get('step')!r}), so it cannot be resumed from")
            before = [raw for raw, row in rows if row["step"] < resume_step]
            kept = b"".join(before)
            if len(before) < resume_step:
                warnings.warn(f"{self.path} holds {len(before)} rows before step {resume_step}, not {resume_step}: "
                              "the metrics of some earlier batches are missing", stacklevel=2)
        elif resume_step:
            warnings.warn(f"resuming at step {resume_step} but {self.path} does not exist: the metrics of "
                          "the earlier batches are missing", stacklevel=2)
        _atomic_write(self.path, kept)
        self._file = open(self.path, "ab")
        # A fresh run purges from step 0, hiding points an earlier run left in the same directory.
        # The suffix keeps event files of runs started in the same second apart (tensorboardX names
        # them by the second and would overwrite) and sorts them in start order, which TensorBoard's
        # purge relies on.
        self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=resume_step or 0,
                                     filename_suffix=f".{time.time_ns()}")

    def write(self, row: dict) -> None:
        """Append one batch's row (a dict with an integer ``step``) to the log and TensorBoard."""
        if self._file is None:
            raise ValueError(f"MetricsLog for {self.run_dir} is closed; open a new one to write more rows")
        if not isinstance(row, dict) or isinstance(row.get("step"), bool) \
                or not isinstance(row.get("step"), numbers.Integral):
            raise ValueError(f"a metrics row must be a dict with an integer 'step' (the global batch index), "
                             f"got {row!r}")
        line = json.dumps(row, default=_json_default).encode() + b"\n"
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        step = int(row["step"])
        for tag, value in _scalars(row):
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close both files (safe to call twice)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- numbers: utilisation and summary -----------------------------------------------------------

def _pairs_by_rm(row: dict, rm_names) -> dict[str, int]:
    """How many pairs each RM labelled in this batch: ``rm_pairs``, or all ``pairs`` to ``rm``."""
    counts = row.get("rm_pairs")
    if counts is None:
        rm = row.get("rm")
        counts = {rm: row.get("pairs") or 0} if rm in rm_names else {}
    unknown = [name for name in counts if name not in rm_names]
    if unknown:
        raise ValueError(f"metrics row at step {row.get('step')} names RM(s) {unknown} in 'rm_pairs', which are "
                         f"not among rm_names {list(rm_names)}; pass the run's RM names")
    return counts


def _pair_counts(rows, rm_names, categories) -> tuple[list[str], np.ndarray]:
    """[categories (+ "mixed" when some batch mixed categories), RMs] pairs each RM labelled."""
    rows_of = list(categories)
    if MIXED not in rows_of and any(row.get("category") == MIXED for row in rows):
        rows_of.append(MIXED)
    counts = np.zeros((len(rows_of), len(rm_names)), np.int64)
    for row in rows:
        category = row.get("category")
        if category not in rows_of:
            raise ValueError(f"metrics row at step {row.get('step')} has category {category!r}, not among "
                             f"categories {list(categories)} (or {MIXED!r}); pass the run's categories")
        for name, n in _pairs_by_rm(row, rm_names).items():
            counts[rows_of.index(category), list(rm_names).index(name)] += int(n)
    return rows_of, counts


def _utilisation_grid(rows, rm_names, categories) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Category labels, pair counts [categories, RMs] and each row's fractions (zeros without pairs)."""
    rows_of, counts = _pair_counts(rows, rm_names, categories)
    return rows_of, counts, counts / np.maximum(counts.sum(1, keepdims=True), 1)


def utilisation(rows, rm_names, categories) -> dict[str, dict[str, float]]:
    """Fraction of each category's pairs that each RM labelled (from ``rm_pairs``); a category
    with no pair gets all zeros; batches of category "mixed" form a row of their own."""
    rows_of, _, fractions = _utilisation_grid(rows, rm_names, categories)
    return {category: dict(zip(rm_names, map(float, fractions[i]))) for i, category in enumerate(rows_of)}


def _finite(x) -> float | None:
    """A float for JSON, or None for a value that is missing or not finite (strict JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None


def _time_phases(rows) -> list[str]:
    """The ``time_*`` fields besides ``time_batch``, in the order rows first show them."""
    seen = {}
    for row in rows:
        for field in row:
            if field.startswith("time_") and field != "time_batch":
                seen.setdefault(field[len("time_"):], None)
    return list(seen)


def _time_split(rows) -> dict[str, dict[str, float | None]]:
    """Mean seconds per batch of each phase, and its share (%) of the batch time; a phase a
    row does not report took 0 s there; "other" is the batch time no phase accounts for."""
    totals = {phase: sum(row.get(f"time_{phase}") or 0.0 for row in rows) for phase in _time_phases(rows)}
    batch = sum(row.get("time_batch") or 0.0 for row in rows)
    totals["other"] = batch - sum(totals.values())
    totals["batch"] = batch
    return {phase: {"mean_s": _finite(total / len(rows)) if rows else None,
                    "percent": _finite(100 * total / batch) if batch else None}
            for phase, total in totals.items()}


def _loss_per_iteration(rows) -> dict[str, dict]:
    """Mean loss over the trained (not skipped) batches of each iteration, keyed by str(iteration)."""
    out = {}
    for iteration in dict.fromkeys(row.get("iteration") for row in rows):
        mine = [row for row in rows if row.get("iteration") == iteration]
        losses = [row["loss"] for row in mine if not row.get("skipped") and row.get("loss") is not None]
        out[str(iteration)] = {"mean_loss": _finite(np.mean(losses)) if losses else None,
                               "batches": len(mine), "skipped": sum(bool(row.get("skipped")) for row in mine)}
    return out


def _check_accuracy(name: str, accuracy: dict, categories) -> None:
    missing = [c for c in categories if c not in accuracy]
    extra = [c for c in accuracy if c not in categories]
    if missing or extra:
        raise ValueError(f"{name} must give the accuracy of exactly the categories {list(categories)}; "
                         f"missing {missing}, unexpected {extra} (\"all\" is computed, do not pass it)")


def summarize(rows, rm_names, categories, accuracy_before: dict[str, float], accuracy_after: dict[str, float],
              extra: dict | None = None) -> dict:
    """A JSON-ready summary of a run: accuracy before/after per category (+ "all", their mean),
    utilisation, pairs, skipped batches, mean loss per iteration, time split, and ``extra``."""
    _check_accuracy("accuracy_before", accuracy_before, categories)
    _check_accuracy("accuracy_after", accuracy_after, categories)
    accuracy = {c: {"before": float(accuracy_before[c]), "after": float(accuracy_after[c])} for c in categories}
    accuracy["all"] = {when: float(np.mean([accuracy[c][when] for c in categories])) if categories else None
                       for when in ("before", "after")}
    rows_of, counts = _pair_counts(rows, rm_names, categories)
    losses = [row.get("loss") for row in rows if not row.get("skipped") and row.get("loss") is not None]
    return {
        "rm_names": list(rm_names),
        "categories": list(categories),
        "accuracy": accuracy,
        "utilisation": utilisation(rows, rm_names, categories),
        "pairs_per_category": dict(zip(rows_of, map(int, counts.sum(1)))),
        "total_pairs": int(sum(row.get("pairs") or 0 for row in rows)),
        "batches": len(rows),
        "skipped_batches": sum(bool(row.get("skipped")) for row in rows),
        "nonfinite_losses": sum(not math.isfinite(x) for x in losses),
        "loss_per_iteration": _loss_per_iteration(rows),
        "time": _time_split(rows),
        "extra": dict(extra or {}),
    }


def _pct(x) -> str:
    return "  n/a" if x is None else f"{x:4.0f}%"


def format_summary(summary: dict) -> str:
    """A compact table: accuracy before -> after per category, utilisation per category with
    its top RM, pairs / skipped batches / loss per iteration, and the time split of a batch."""
    cats = list(summary["accuracy"])
    width = max(len(c) for c in [*cats, *summary["utilisation"], "utilisation"])
    lines = [f"{'category':{width}s}  accuracy before -> after"]
    for c in cats:
        a = summary["accuracy"][c]
        if a["before"] is None:
            continue
        lines.append(f"{c:{width}s}  {a['before']:.3f} -> {a['after']:.3f}  ({a['after'] - a['before']:+.3f})")
    names = summary["rm_names"]
    lines.append("")
    lines.append(f"{'utilisation':{width}s}  " + "  ".join(f"{n:>{max(len(n), 5)}s}" for n in names) + "  top RM")
    for c, fractions in summary["utilisation"].items():
        pairs = summary["pairs_per_category"][c]
        cells = "  ".join(f"{_pct(100 * fractions[n]):>{max(len(n), 5)}s}" for n in names)
        top = max(names, key=fractions.__getitem__) if pairs and names else None
        lines.append(f"{c:{width}s}  {cells}  " + (f"{top} ({pairs} pairs)" if top else "no pairs"))
    lines.append("")
    losses = ", ".join(f"{i}: {'n/a' if v['mean_loss'] is None else format(v['mean_loss'], '.4f')}"
                       for i, v in summary["loss_per_iteration"].items())
    lines.append(f"{summary['total_pairs']} pairs in {summary['batches']} batches ({summary['skipped_batches']} "
                 f"skipped); mean loss per iteration: {losses or 'n/a'}")
    t = summary["time"]
    if t["batch"]["mean_s"] is not None:
        phases = " | ".join(f"{p} {'n/a' if v['percent'] is None else format(v['percent'], '.1f') + '%'}"
                            for p, v in t.items() if p != "batch")
        lines.append(f"time per batch {t['batch']['mean_s']:.2f} s: {phases}")
    return "\n".join(lines)


def write_summary(run_dir, summary: dict) -> pathlib.Path:
    """Write ``summary`` as strict JSON to ``run_dir/summary.json`` atomically; return its path."""
    path = pathlib.Path(run_dir) / SUMMARY_FILE
    _atomic_write(path, (json.dumps(summary, indent=1, allow_nan=False, default=_json_default) + "\n").encode())
    return path


# --- plots --------------------------------------------------------------------------------------

def _figure(figsize):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(figsize=figsize)


def _no_data(ax, why: str) -> None:
    ax.text(0.5, 0.5, f"no data: {why}", ha="center", va="center", transform=ax.transAxes)


def _save(plt, fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bandit_rewards(rows, rm_names, path) -> None:
    """PNG: the bandit reward of each trained batch over steps, one colour per RM (its points
    and their running mean); batches whose pairs went to several RMs are grey ("mixed")."""
    plt, fig, ax = _figure((9, 4.5))
    trained = [row for row in rows if not row.get("skipped") and row.get("bandit_reward") is not None]
    for row in trained:
        if row.get("rm") not in (*rm_names, MIXED, None):
            raise ValueError(f"metrics row at step {row.get('step')} has rm {row.get('rm')!r}, not among rm_names "
                             f"{list(rm_names)}; pass the run's RM names")
    colours = plt.get_cmap("tab10")
    series = [(name, colours(i % 10)) for i, name in enumerate(rm_names)] + [(MIXED, "grey")]
    for name, colour in series:
        mine = [row for row in trained if (row.get("rm") or MIXED) == name]
        if name == MIXED and not mine:
            continue
        steps = np.array([row["step"] for row in mine], float)
        reward = np.array([row["bandit_reward"] for row in mine], float)
        running = np.cumsum(reward) / np.arange(1, len(reward) + 1)
        ax.scatter(steps, reward, s=10, alpha=0.45, color=colour)
        ax.plot(steps, running, color=colour, label=f"{name} ({len(mine)} batches)")
    if not trained:
        _no_data(ax, "every batch was skipped" if rows else "no batch logged")
    ax.set(xlabel="step (training batch)", ylabel="bandit reward",
           title="Bandit reward per batch (dots) and running mean per RM (lines)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_utilisation(rows, rm_names, categories, path) -> None:
    """PNG heatmap: the fraction of each category's pairs that each RM labelled, annotated in %."""
    plt, fig, ax = _figure((1.6 + 1.3 * len(rm_names), 1.4 + 0.55 * (len(categories) + 1)))
    rows_of, counts, grid = _utilisation_grid(rows, rm_names, categories)
    im = ax.imshow(np.where(counts.sum(1, keepdims=True) > 0, grid, np.nan), vmin=0, vmax=1, cmap="viridis",
                   aspect="auto")
    for i in range(len(rows_of)):
        for j in range(len(rm_names)):
            if counts[i].sum():
                ax.text(j, i, f"{100 * grid[i, j]:.0f}%", ha="center", va="center", fontsize=9,
                        color="white" if grid[i, j] < 0.6 else "black")
            else:
                ax.text(j, i, "–", ha="center", va="center", color="grey")
    ax.set_xticks(range(len(rm_names)), rm_names, rotation=30, ha="right")
    ax.set_yticks(range(len(rows_of)), [f"{c} ({n})" for c, n in zip(rows_of, counts.sum(1))])
    ax.set_title("RM utilisation per category (share of pairs)")
    if not counts.any():
        _no_data(ax, "no preference pair was labelled")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(plt, fig, path)
