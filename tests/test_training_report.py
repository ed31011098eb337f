"""The observability of a training run: metrics.jsonl (resume, kills), TensorBoard scalars,
utilisation / summary numbers against hand-computed ones, and the plots."""
import json
import math
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from rmbandit.training import report
from rmbandit.training.report import (MetricsLog, format_summary, plot_bandit_rewards, plot_utilisation,
                                      read_metrics, summarize, utilisation, write_summary)

RMS = ["numeric-verifier", "format-verifier", "judge"]
CATS = ["arithmetic", "facts"]


def _row(step, rm="numeric-verifier", category="arithmetic", pairs=10, skipped=False, **extra):
    rm_pairs = {name: 0 for name in RMS}
    if not skipped and rm != "mixed":
        rm_pairs[rm] = pairs
    row = {"step": step, "iteration": step // 4, "batch": step % 4, "category": category, "rm": rm,
           "rm_pairs": rm_pairs, "loss": None if skipped else 0.7 - 0.01 * step,
           "bandit_reward": None if skipped else 0.1 * (step % 5), "pairs": 0 if skipped else pairs,
           "skipped": skipped, "time_sample": 1.0, "time_score": 0.5, "time_step": 0.0 if skipped else 2.0,
           "time_router": 0.1, "time_batch": 4.0}
    row.update(extra)
    return row


def _rows(n=10):
    return [_row(s, rm=RMS[s % 3], category=CATS[s % 2], skipped=(s == 4)) for s in range(n)]


def _records(file):
    """The Events of one TensorBoard event file (TFRecord framing: u64 length, u32 crc, payload, u32 crc)."""
    data, at = file.read_bytes(), 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        yield event_pb2.Event.FromString(data[at + 12:at + 12 + length])
        at += 16 + length


def _event_files(run_dir):
    return sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def _events(run_dir):
    """(tag, step, value) of every scalar in the run's event files, in file order."""
    return [(value.tag, event.step, value.simple_value)
            for file in _event_files(run_dir) for event in _records(file) for value in event.summary.value]


# --- metrics.jsonl -----------------------------------------------------------------------------

def test_rows_round_trip_with_numpy_values(tmp_path):
    rows = _rows()
    rows[1]["loss"] = np.float32(0.25)              # what a loop hands over after jax.device_get
    rows[2]["pairs"] = np.int64(10)
    with MetricsLog(tmp_path) as log:
        for row in rows:
            log.write(row)
    back = read_metrics(tmp_path / "metrics.jsonl")
    assert back[1]["loss"] == 0.25 and back[2]["pairs"] == 10
    rows[1]["loss"], rows[2]["pairs"] = 0.25, 10
    assert back == rows
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 10


def test_each_row_is_on_disk_before_close(tmp_path):
    log = MetricsLog(tmp_path)
    log.write(_row(0))
    log.write(_row(1))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.write(_row(2))


def test_resume_ends_byte_for_byte_like_an_uninterrupted_run(tmp_path):
    rows = _rows()
    with MetricsLog(tmp_path / "straight") as log:
        for row in rows:
            log.write(row)
    killed = tmp_path / "killed"
    with MetricsLog(killed) as log:
        for row in rows:                # ran to the end; the checkpoint after batch 5 is the last kept
            log.write(row)
    with open(killed / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 10, "iteration": 2, "los')          # and was killed mid-line
    with pytest.warns(UserWarning, match="line 11 is incomplete"):
        log = MetricsLog(killed, resume_step=6)
    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == [0, 1, 2, 3, 4, 5]
    with log:
        for row in rows[6:]:
            log.write(row)
    assert (killed / "metrics.jsonl").read_bytes() == (tmp_path / "straight" / "metrics.jsonl").read_bytes()


def test_fresh_run_starts_the_file_empty(tmp_path):
    with MetricsLog(tmp_path) as log:
        log.write(_row(0))
        log.write(_row(1))
    with MetricsLog(tmp_path) as log:
        log.write(_row(0, rm="judge"))
    assert [r["rm"] for r in read_metrics(tmp_path / "metrics.jsonl")] == ["judge"]


def test_resume_with_rows_missing_warns(tmp_path):
    with pytest.warns(UserWarning, match="does not exist"):
        MetricsLog(tmp_path, resume_step=3).close()
    with MetricsLog(tmp_path) as log:
        log.write(_row(0))
    with pytest.warns(UserWarning, match="holds 1 rows before step 3"):
        MetricsLog(tmp_path, resume_step=3).close()


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(_row(0)) + "\n" + json.dumps(_row(1))[:40])
    with pytest.warns(UserWarning, match=r"metrics.jsonl: line 2 is incomplete"):
        assert [r["step"] for r in read_metrics(path)] == [0]
    path.write_text(json.dumps(_row(0)) + "\n" + json.dumps(_row(1)))       # complete, only the \n missing
    assert [r["step"] for r in read_metrics(path)] == [0, 1]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(_row(s)) for s in range(4)]
    lines[1] = lines[1][:30]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a metrics row .*fix or delete line 2"):
        read_metrics(path)
    with pytest.raises(ValueError, match="line 2 is not a metrics row"):
        MetricsLog(tmp_path, resume_step=3)
    assert path.read_text() == "\n".join(lines) + "\n"                      # nothing lost
    path.write_text(lines[0] + "\n[1, 2]\n" + lines[2] + "\n")
    with pytest.raises(ValueError, match="line 2 is not a metrics row .*expected a JSON object, got list"):
        read_metrics(path)


@pytest.mark.parametrize("bad", [{"iteration": 0}, {"step": "3"}, {"step": True}, [("step", 0)]])
def test_a_row_without_integer_step_is_refused(tmp_path, bad):
    with MetricsLog(tmp_path) as log, pytest.raises(ValueError, match="integer 'step'"):
        log.write(bad)


@pytest.mark.parametrize("bad", [-1, 2.0, "6", True])
def test_bad_resume_step_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="resume_step must be None .* got"):
        MetricsLog(tmp_path, resume_step=bad)


# --- TensorBoard --------------------------------------------------------------------------------

def test_tensorboard_scalars(tmp_path):
    rows = _rows(6)
    with MetricsLog(tmp_path) as log:
        for row in rows:
            log.write(row)
    events = _events(tmp_path)
    points = {(tag, step): value for tag, step, value in events}
    assert points[("loss", 3)] == pytest.approx(0.67)
    assert points[("bandit_reward", 2)] == pytest.approx(0.2)
    assert points[("time/sample", 5)] == 1.0 and points[("time/batch", 0)] == 4.0
    assert points[("skipped", 4)] == 1.0 and points[("skipped", 3)] == 0.0
    assert points[("rm_pairs/judge", 2)] == 10.0 and points[("rm_pairs/judge", 3)] == 0.0
    assert ("loss", 4) not in points                                        # skipped: loss is null
    tags = {tag for tag, _, _ in events}
    assert "step" not in tags and "rm" not in tags and "category" not in tags
    assert tags == {"iteration", "batch", "loss", "bandit_reward", "pairs", "skipped", "time/sample",
                    "time/score", "time/step", "time/router", "time/batch",
                    *(f"rm_pairs/{name}" for name in RMS)}


def test_tensorboard_resume_purges_from_the_resume_step(tmp_path):
    with MetricsLog(tmp_path) as log:
        for row in _rows(8):
            log.write(row)
    with MetricsLog(tmp_path, resume_step=5) as log:
        log.write(_row(5, loss=9.0))
    files = _event_files(tmp_path)
    assert len(files) == 2                  # same second, yet the first file was not overwritten
    for file, purge_from in zip(files, [0, 5]):       # a fresh run hides what an earlier run left
        starts = [(e.session_log.status, e.step) for e in _records(file) if e.HasField("session_log")]
        assert starts == [(event_pb2.SessionLog.START, purge_from)]
    assert [v for tag, step, v in _events(tmp_path) if tag == "loss" and step == 5][-1] == 9.0


# --- utilisation and summary --------------------------------------------------------------------

def test_utilisation_against_a_hand_count():
    rows = [
        _row(0, rm="numeric-verifier", category="arithmetic", pairs=6),
        _row(1, rm="judge", category="arithmetic", pairs=2),
        _row(2, rm="mixed", category="facts", pairs=10,
             rm_pairs={"numeric-verifier": 1, "format-verifier": 0, "judge": 3}),
        _row(3, rm="judge", category="facts", skipped=True),
    ]
    table = utilisation(rows, RMS, CATS)
    # arithmetic: 6 numeric + 2 judge of 8; facts: 1 numeric + 3 judge of 4; format-verifier never used
    assert table == {"arithmetic": {"numeric-verifier": 0.75, "format-verifier": 0.0, "judge": 0.25},
                     "facts": {"numeric-verifier": 0.25, "format-verifier": 0.0, "judge": 0.75}}
    assert utilisation([], RMS, CATS)["facts"] == {name: 0.0 for name in RMS}


def test_utilisation_mixed_batches_and_rows_without_rm_pairs():
    rows = [_row(0, category="mixed", rm="mixed", rm_pairs={"judge": 4, "format-verifier": 4}),
            {"step": 1, "category": "facts", "rm": "judge", "pairs": 5}]
    table = utilisation(rows, RMS, CATS)
    assert list(table) == ["arithmetic", "facts", "mixed"]
    assert table["mixed"] == {"numeric-verifier": 0.0, "format-verifier": 0.5, "judge": 0.5}
    assert table["facts"]["judge"] == 1.0


def test_utilisation_names_unknown_rms_and_categories():
    with pytest.raises(ValueError, match=r"step 0 names RM\(s\) \['oracle'\].*not among rm_names"):
        utilisation([_row(0, rm_pairs={"oracle": 3})], RMS, CATS)
    with pytest.raises(ValueError, match="step 0 has category 'poetry', not among categories"):
        utilisation([_row(0, category="poetry")], RMS, CATS)


def test_summarize_numbers_and_phase_shares():
    rows = _rows(8)
    rows[7]["loss"] = float("nan")
    before = {"arithmetic": 0.4, "facts": 0.6}
    after = {"arithmetic": 0.5, "facts": 0.9}
    s = summarize(rows, RMS, CATS, before, after, extra={"router": "laser", "seed": 0})
    assert s["accuracy"]["facts"] == {"before": 0.6, "after": 0.9}
    assert s["accuracy"]["all"] == {"before": pytest.approx(0.5), "after": pytest.approx(0.7)}
    assert s["total_pairs"] == 70 and s["batches"] == 8 and s["skipped_batches"] == 1
    assert s["nonfinite_losses"] == 1
    # iteration 0: steps 0..3 -> loss 0.70 0.69 0.68 0.67; iteration 1: step 4 skipped, 5, 6, and NaN at 7
    assert s["loss_per_iteration"]["0"] == {"mean_loss": pytest.approx(0.685), "batches": 4, "skipped": 0}
    assert s["loss_per_iteration"]["1"] == {"mean_loss": None, "batches": 4, "skipped": 1}
    # per batch 4.0 s: sample 1.0, score 0.5, router 0.1, step 2.0 (0 on the skipped batch)
    t = s["time"]
    assert t["sample"] == {"mean_s": 1.0, "percent": 25.0}
    assert t["score"]["percent"] == pytest.approx(12.5) and t["router"]["percent"] == pytest.approx(2.5)
    assert t["step"]["mean_s"] == pytest.approx(2.0 * 7 / 8)
    assert t["step"]["percent"] == pytest.approx(100 * 14 / 32)
    assert t["other"]["percent"] == pytest.approx(100 - 25 - 12.5 - 2.5 - 100 * 14 / 32)
    assert t["batch"] == {"mean_s": 4.0, "percent": 100.0}
    assert list(t) == ["sample", "score", "step", "router", "other", "batch"]
    assert s["utilisation"] == utilisation(rows, RMS, CATS)
    assert s["extra"] == {"router": "laser", "seed": 0}
    assert json.loads(json.dumps(s, allow_nan=False)) == s                  # JSON-ready, strict


def test_summarize_all_skipped_and_empty():
    rows = [_row(s, skipped=True) for s in range(3)]
    acc = {"arithmetic": 0.5, "facts": 0.5}
    s = summarize(rows, RMS, CATS, acc, acc, None)
    assert s["total_pairs"] == 0 and s["skipped_batches"] == 3
    assert s["loss_per_iteration"] == {"0": {"mean_loss": None, "batches": 3, "skipped": 3}}
    text = format_summary(s)
    assert "no pairs" in text and "0 pairs in 3 batches (3 skipped)" in text
    empty = summarize([], RMS, CATS, acc, acc)
    assert empty["time"]["batch"] == {"mean_s": None, "percent": None}
    assert "0 pairs in 0 batches" in format_summary(empty)


def test_summarize_names_a_wrong_accuracy_dict():
    good = {"arithmetic": 0.5, "facts": 0.5}
    with pytest.raises(ValueError, match=r"accuracy_after must give .* missing \['facts'\], unexpected \['fact'\]"):
        summarize(_rows(), RMS, CATS, good, {"arithmetic": 0.5, "fact": 0.5})


def test_format_summary_shows_accuracy_top_rm_and_time_split():
    rows = [_row(0, rm="judge", pairs=8), _row(1, rm="numeric-verifier", pairs=2),
            _row(2, rm="format-verifier", category="facts", pairs=4)]
    s = summarize(rows, RMS, CATS, {"arithmetic": 0.4, "facts": 0.6}, {"arithmetic": 0.5, "facts": 0.55})
    text = format_summary(s)
    lines = text.splitlines()
    assert any(l.startswith("arithmetic") and "0.400 -> 0.500  (+0.100)" in l for l in lines)
    assert any(l.startswith("facts") and "0.600 -> 0.550  (-0.050)" in l for l in lines)
    assert any(l.startswith("arithmetic") and "80%" in l and l.endswith("judge (10 pairs)") for l in lines)
    assert any(l.startswith("facts") and l.endswith("format-verifier (4 pairs)") for l in lines)
    assert "time per batch 4.00 s: sample 25.0% | score 12.5% | step 50.0% | router 2.5% | other 10.0%" in text


def test_write_summary_is_strict_json_and_atomic(tmp_path, monkeypatch):
    s = summarize(_rows(), RMS, CATS, {"arithmetic": 0.4, "facts": 0.6}, {"arithmetic": 0.5, "facts": 0.6},
                  extra={"seed": np.int64(3)})
    path = write_summary(tmp_path, s)
    assert path == tmp_path / "summary.json"
    assert json.loads(path.read_text())["extra"]["seed"] == 3
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(report.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_summary(tmp_path, {**s, "batches": 99})
    assert path.read_bytes() == before                                       # the old summary survives
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]         # no temp file left
    monkeypatch.undo()
    with pytest.raises(ValueError):
        write_summary(tmp_path, {"loss": math.nan})                          # strict JSON: no NaN


# --- plots --------------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def test_plots_are_pngs_when_an_rm_never_appears(tmp_path):
    rows = [_row(s, rm=RMS[s % 2], category=CATS[s % 2], skipped=(s == 3)) for s in range(12)]   # no judge
    rows.append(_row(12, rm="mixed", rm_pairs={"judge": 1, "numeric-verifier": 2, "format-verifier": 0}))
    plot_bandit_rewards(rows, RMS, tmp_path / "rewards.png")
    plot_utilisation(rows, RMS, CATS, tmp_path / "utilisation.png")
    width, height = _png_size(tmp_path / "rewards.png")
    assert width > 400 and height > 200
    assert min(_png_size(tmp_path / "utilisation.png")) > 150


def test_plots_of_an_all_skipped_run_say_no_data(tmp_path, monkeypatch):
    import matplotlib.axes
    said, original = [], matplotlib.axes.Axes.text

    def text(self, x, y, s, *args, **kwargs):          # record what the plots write on their axes
        said.append(s)
        return original(self, x, y, s, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "text", text)
    rows = [_row(s, skipped=True) for s in range(5)]
    plot_bandit_rewards(rows, RMS, tmp_path / "rewards.png")
    plot_utilisation(rows, RMS, CATS, tmp_path / "utilisation.png")
    plot_bandit_rewards([], RMS, tmp_path / "empty.png")
    assert "no data: every batch was skipped" in said
    assert "no data: no preference pair was labelled" in said
    assert "no data: no batch logged" in said
    for name in ("rewards.png", "utilisation.png", "empty.png"):
        assert _png_size(tmp_path / name)[0] > 100


def test_plot_names_an_unknown_rm(tmp_path):
    with pytest.raises(ValueError, match="step 0 has rm 'oracle', not among rm_names"):
        plot_bandit_rewards([_row(0, rm="oracle", rm_pairs={})], RMS, tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_report_does_not_import_jax():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(report))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    assert imported <= {"__future__", "json", "math", "numbers", "os", "pathlib", "tempfile", "time",
                        "warnings", "numpy", "matplotlib", "tensorboardX"}, imported
