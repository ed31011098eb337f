"""Where a compiled program's device time goes: trace a few calls with ``jax.profiler``
and charge each executed HLO op's time to its kind (matmul, fusion, copy, ...) and to the
line of source that made it, read from the compiled HLO's metadata.

    compiled = jax.jit(step).lower(*args).compile()
    summary = profile_calls(lambda: compiled(*args), compiled.as_text(), calls=3, log_dir="prof")

The answer is a small JSON-able dict (``summarise``), meant to come back from a lent
accelerator whose trace files are too large to keep: the milliseconds per call by op kind,
by name scope (flax module paths, forward / backward, all layers together) and by source
line, and the heaviest ops with their shapes."""
from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import time
from typing import Callable, NamedTuple

MATMUL_OPCODES = {"dot", "convolution"}
COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "all-reduce-start", "all-gather-start", "collective-permute-start"}
CONTAINERS = {"while", "conditional", "call"}       # their bodies' ops carry the time


class HloOp(NamedTuple):
    opcode: str
    shape: str              # the result type as the HLO text writes it
    category: str
    scope: str              # the op's name scope, one entry for all layers: "bwd .../layers_*/self_attn/q_proj/dot_general"
    source: str             # "file:line (function)" of the innermost frame recorded, or "?"
    fused: tuple            # opcodes inside a fusion's computation


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$")
_OPCODE = re.compile(r"(?:^|[\s}\])])([a-z][a-z0-9\-]*)\(")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+) \(")


def _tables(text: str) -> dict:
    """The HLO text's FileNames / FunctionNames / FileLocations / StackFrames tables."""
    tables, current = {}, None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
        elif not line.strip() or line.startswith(("%", "ENTRY", "HloModule")):
            current = None
        elif current is not None:
            key, _, value = line.strip().partition(" ")
            current[int(key)] = value.strip('"') if value.startswith('"') else dict(
                (k, int(v)) for k, v in re.findall(r"(\w+)=(-?\d+)", value))
    return tables


def _source(attributes: str, tables: dict, prefer: str) -> str:
    """"file:line (function)" of an instruction's innermost recorded frame (its stack
    frame, or the older source_file / source_line), the path cut to start at ``prefer``
    where it holds it.  Only the innermost frame: the parents that XLA's text prints do
    not follow the calls."""
    frame = re.search(r"stack_frame_id=(\d+)", attributes)
    direct = re.search(r'source_file="([^"]*)" source_line=(\d+)', attributes)
    if frame and int(frame.group(1)) in tables.get("StackFrames", {}):
        location = tables.get("FileLocations", {}).get(tables["StackFrames"][int(frame.group(1))].get("file_location_id"), {})
        source = (f"{tables.get('FileNames', {}).get(location.get('file_name_id'), '?')}:{location.get('line', '?')} "
                  f"({tables.get('FunctionNames', {}).get(location.get('function_name_id'), '?')})")
    elif direct:
        source = f"{direct.group(1)}:{direct.group(2)}"
    else:
        return "?"
    return source[source.index(prefer):] if prefer and prefer in source else source


def _scope(attributes: str) -> str:
    """The op's ``op_name`` (its jit / module name scopes) with the wrappers dropped and
    the layer index starred, so that one entry holds an op of every layer; "fwd" / "bwd"
    where autodiff tells (jvp / transpose)."""
    name = re.search(r'op_name="([^"]*)"', attributes)
    if not name:
        return "?"
    parts, direction = [], ""
    for part in name.group(1).split(";")[0].split("/"):
        if part in ("while", "body", "cond", "closed_call", "checkpoint", "remat") or part.startswith("jit("):
            continue
        if part.startswith("transpose("):
            direction, part = "bwd", part[len("transpose("):].rstrip(")")
        if part.startswith("jvp("):
            direction, part = direction or "fwd", part[len("jvp("):].rstrip(")")
        if part:
            parts.append(re.sub(r"^layers_\d+$", "layers_*", part))
    return " ".join(x for x in (direction, "/".join(parts)) if x)


def _category(opcode: str, attributes: str, fused: tuple) -> str:
    target = re.search(r'custom_call_target="([^"]*)"', attributes)
    backend = re.search(r'"kind":"([^"]*)"', attributes)
    label = ((target.group(1) if target else "") + " " + (backend.group(1) if backend else "")).lower()
    if any(word in label for word in ("fmha", "attention", "flash")):
        return "attention kernel"
    if opcode in MATMUL_OPCODES or any(word in label for word in ("gemm", "matmul", "cublas", "dot")) \
            or MATMUL_OPCODES & set(fused):
        return "matmul"
    if opcode in COLLECTIVES or COLLECTIVES & set(fused):
        return "collective"
    for kind in ("scatter", "gather", "dynamic-update-slice", "sort"):
        if opcode == kind or kind in fused:
            return kind
    if opcode == "fusion":
        return "reduction fusion" if "reduce" in fused else "elementwise fusion"
    if opcode in ("copy", "transpose", "copy-start", "copy-done"):
        return "copy"
    return opcode


def hlo_ops(text: str, prefer: str = "rmbandit/") -> dict[str, HloOp]:
    """Every instruction of an optimised HLO module's text (``compiled.as_text()``) by
    name: its opcode, result type, category and source.  A fusion is a matmul when its
    computation holds a dot, and takes the dot's source."""
    tables = _tables(text)
    computations: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and line.rstrip().endswith("{"):
            current = computations.setdefault(header.group(1), [])
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line) if current is not None else None
        if match:
            rest = match.group(2)
            opcode = _OPCODE.search(rest)
            if opcode:
                current.append((match.group(1), opcode.group(1), rest[:opcode.start(1)].strip(), rest))
    ops = {}
    for instructions in computations.values():
        for name, opcode, shape, rest in instructions:
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            inner = computations.get(called.group(1), []) if called and opcode == "fusion" else []
            fused = tuple(sorted({op for _, op, _, _ in inner} - {"parameter", "constant"}))
            # a fusion is named by its dot, else by its own op_name, else (XLA:CPU's fusions
            # carry none) by the last fused op that has one, usually its root
            dots = [r for _, op, _, r in inner if op in MATMUL_OPCODES]
            scoped = [r for _, op, _, r in inner if 'op_name="' in r and op not in ("parameter", "constant")]
            named = dots[0] if dots else rest if 'op_name="' in rest or not scoped else scoped[-1]
            ops[name] = HloOp(opcode, shape, _category(opcode, rest, fused), _scope(named),
                              _source(named, tables, prefer), fused)
    return ops


def module_name(text: str) -> str:
    match = re.match(r"HloModule ([\w.\-]+)", text)
    return match.group(1) if match else ""


def trace_file(log_dir) -> pathlib.Path:
    """The newest perfetto trace that ``jax.profiler.trace(..., create_perfetto_trace=True)``
    wrote under ``log_dir``."""
    found = sorted(pathlib.Path(log_dir).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not found:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {log_dir}/plugins/profile: was the trace taken "
                                "with create_perfetto_trace=True?")
    return found[-1]


def op_events(path, module: str) -> tuple[collections.Counter, collections.Counter, dict]:
    """Microseconds and launches per HLO op of ``module`` from a perfetto trace, and the
    microseconds per timeline line.  On an accelerator only the device's kernel lines count
    (its "Stream" lines where it has them, so that the per-op summary lines of the same
    kernels are not counted twice), each kernel under its ``hlo_op`` or else its own name;
    without one, the host threads that run XLA:CPU's ops."""
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    processes, threads = {}, {}
    for event in events:
        if event.get("ph") == "M" and event.get("name") == "process_name":
            processes[event["pid"]] = event["args"]["name"]
        elif event.get("ph") == "M" and event.get("name") == "thread_name":
            threads[(event["pid"], event["tid"])] = event["args"]["name"]
    timed = [e for e in events if e.get("ph") == "X" and e.get("args", {}).get("hlo_module", module) == module]
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    if devices:
        tagged = [e for e in timed if e["pid"] in devices]
        streams = [e for e in tagged if threads.get((e["pid"], e["tid"]), "").startswith("Stream")]
        tagged = streams or tagged
    else:
        tagged = [e for e in timed if e.get("args", {}).get("hlo_op")]
    micros, launches, lines = collections.Counter(), collections.Counter(), collections.Counter()
    for event in tagged:
        name = event.get("args", {}).get("hlo_op") or event["name"]
        micros[name] += event.get("dur", 0.0)
        launches[name] += 1
        lines[f"{processes.get(event['pid'], event['pid'])} / {threads.get((event['pid'], event['tid']), event['tid'])}"] \
            += event.get("dur", 0.0)
    return micros, launches, dict(lines)


def summarise(micros: collections.Counter, launches: collections.Counter, ops: dict[str, HloOp], calls: int,
              top: int = 30) -> dict:
    """Milliseconds per call by category, by name scope and by source line, and the
    ``top`` heaviest ops."""
    per_call = lambda us: us / 1e3 / calls
    unknown = HloOp("?", "?", "unknown op", "?", "?", ())
    # a kernel that carries no op name is named after its fusion with "_" for "." (loop_add_fusion_3)
    ops = {**{name.replace(".", "_"): op for name, op in ops.items()}, **ops}
    micros = collections.Counter({k: v for k, v in micros.items() if ops.get(k, unknown).opcode not in CONTAINERS})
    total = sum(micros.values())
    by_category, by_scope, by_source = collections.Counter(), collections.Counter(), collections.Counter()
    for name, us in micros.items():
        op = ops.get(name, unknown)
        by_category[op.category] += us
        by_scope[op.scope] += us
        by_source[op.source] += us
    share = lambda us: round(us / total, 4) if total else 0.0
    return {
        "op_ms_per_call": per_call(total),
        "by_category": {k: {"ms": per_call(v), "share": share(v)} for k, v in by_category.most_common()},
        "by_scope": [{"scope": k, "ms": per_call(v), "share": share(v)} for k, v in by_scope.most_common(top)],
        "by_source": [{"source": k, "ms": per_call(v), "share": share(v)} for k, v in by_source.most_common(top)],
        "top_ops": [{"op": name, "ms": per_call(us), "launches_per_call": launches[name] / calls,
                     **ops.get(name, unknown)._asdict()} for name, us in micros.most_common(top)],
    }


def profile_calls(run: Callable[[], object], hlo_text: str, calls: int, log_dir, prefer: str = "rmbandit/") -> dict:
    """Trace ``calls`` calls of ``run`` (each blocks until its result is ready; run it once
    before, so that nothing compiles inside the trace) and summarise them against the
    compiled program's ``hlo_text``."""
    import jax

    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0              # Python frames would swamp the trace and add no device time
    start = time.perf_counter()
    with jax.profiler.trace(str(log_dir), create_perfetto_trace=True, profiler_options=options):
        for _ in range(calls):
            jax.block_until_ready(run())
    wall = time.perf_counter() - start
    micros, launches, lines = op_events(trace_file(log_dir), module_name(hlo_text))
    summary = summarise(micros, launches, hlo_ops(hlo_text, prefer), calls)
    return {"module": module_name(hlo_text), "calls": calls, "wall_ms_per_call": 1e3 * wall / calls,
            **summary, "lines_ms_per_call": {k: v / 1e3 / calls for k, v in lines.items()}}
