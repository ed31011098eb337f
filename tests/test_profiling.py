"""rmbandit.profiling: a compiled program's device time by op kind, name scope and source
line: parsed from HLO text as XLA:GPU writes it, read from perfetto traces with a device's
duplicate lines, and end to end on this CPU."""
import collections
import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from rmbandit import profiling

GPU_HLO = """HloModule jit_train_step, is_scheduled=true

FileNames
1 "/src/rmbandit/models/layers.py"
2 "/venv/flax/linen/linear.py"

FunctionNames
1 "_partial_attention"
2 "Dense.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=284 end_line=284 column=4 end_column=9}
2 {file_name_id=2 function_name_id=2 line=287 end_line=287 column=4 end_column=9}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}

%fused_exp (param_0: f32[16,128]) -> f32[16,128] {
  %param_0 = f32[16,128]{1,0} parameter(0)
  ROOT %exp.1 = f32[16,128]{1,0} exponential(%param_0), metadata={op_name="jit(train_step)/while/body/closed_call/jvp(LlamaModel)/LlamaModel._layers/layers_3/self_attn/exp" stack_frame_id=1}
}

%body (p: (s32[], bf16[16,128])) -> (s32[], bf16[16,128]) {
  %p = (s32[], bf16[16,128]{1,0}) parameter(0)
  %gemm.7 = (bf16[16,128]{1,0}, s8[1024]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", metadata={op_name="jit(train_step)/while/body/closed_call/transpose(jvp(LlamaModel))/LlamaModel._layers/layers_12/mlp/down_proj/dot_general" stack_frame_id=2}
  %loop_exp_fusion = f32[16,128]{1,0} fusion(%x), kind=kLoop, calls=%fused_exp
  %fmha.2 = (bf16[16,128]{1,0}, u8[0]{0}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmax"
  ROOT %tuple.1 = (s32[], bf16[16,128]{1,0}) tuple(%i, %y)
}

ENTRY %main.9 (a.1: bf16[16,128]) -> bf16[16,128] {
  %a.1 = bf16[16,128]{1,0} parameter(0), metadata={op_name="a"}
  %while.3 = (s32[], bf16[16,128]{1,0}) while(%t), condition=%cond, body=%body
  ROOT %copy.4 = bf16[16,128]{1,0} copy(%x), metadata={op_name="jit(train_step)/transpose"}
}
"""


def test_hlo_ops_name_each_instructions_kind_scope_and_source():
    ops = profiling.hlo_ops(GPU_HLO)
    gemm = ops["gemm.7"]
    assert gemm.category == "matmul" and gemm.opcode == "custom-call"
    assert gemm.scope == "bwd LlamaModel/LlamaModel._layers/layers_*/mlp/down_proj/dot_general"
    assert gemm.source == "/venv/flax/linen/linear.py:287 (Dense.__call__)"        # not the project's: kept whole
    assert gemm.shape == "(bf16[16,128]{1,0}, s8[1024]{0})"
    fusion = ops["loop_exp_fusion"]                      # named by its fused op: the fusion itself has no metadata
    assert fusion.category == "elementwise fusion" and fusion.fused == ("exponential",)
    assert fusion.scope == "fwd LlamaModel/LlamaModel._layers/layers_*/self_attn/exp"
    assert fusion.source == "rmbandit/models/layers.py:284 (_partial_attention)"
    assert ops["fmha.2"].category == "attention kernel"
    assert ops["copy.4"].category == "copy" and ops["while.3"].opcode == "while"
    assert profiling.module_name(GPU_HLO) == "jit_train_step"


def write_trace(path, events):
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_device_kernels_are_counted_once_and_the_host_not_at_all(tmp_path):
    """A GPU trace shows each kernel on its stream line and again on the device's "XLA
    Ops" line; the host's launch events carry the op name too."""
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #7(Compute)"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 9, "args": {"name": "XLA Ops"}},
            {"ph": "M", "name": "thread_name", "pid": 2, "tid": 3, "args": {"name": "python"}}]
    kernel = lambda pid, tid, op, dur, module="jit_train_step": {
        "ph": "X", "pid": pid, "tid": tid, "name": op, "dur": dur, "ts": 0, "args": {"hlo_op": op, "hlo_module": module}}
    events = meta + [kernel(1, 7, "gemm.7", 300.0), kernel(1, 7, "gemm.7", 310.0), kernel(1, 9, "gemm.7", 610.0),
                     kernel(1, 7, "loop_exp_fusion", 40.0), kernel(2, 3, "gemm.7", 5.0),
                     kernel(1, 7, "fusion.1", 99.0, module="jit_other"),
                     {"ph": "X", "pid": 1, "tid": 7, "name": "loop_exp_fusion", "dur": 10.0, "ts": 0},   # no op name
                     {"ph": "X", "pid": 1, "tid": 7, "name": "sm90_xmma_gemm_bf16", "dur": 6.0, "ts": 0}]
    path = tmp_path / "plugins" / "profile" / "run" / "perfetto_trace.json.gz"
    write_trace(path, events)
    assert profiling.trace_file(tmp_path) == path
    micros, launches, lines = profiling.op_events(path, "jit_train_step")
    assert micros == {"gemm.7": 610.0, "loop_exp_fusion": 50.0, "sm90_xmma_gemm_bf16": 6.0}
    assert launches["gemm.7"] == 2 and launches["loop_exp_fusion"] == 2
    assert lines == {"/device:GPU:0 / Stream #7(Compute)": 666.0}
    ops = profiling.hlo_ops(GPU_HLO)
    summary = profiling.summarise(micros, launches, ops, calls=2)
    assert summary["op_ms_per_call"] == pytest.approx(0.333)
    assert summary["by_category"]["matmul"] == {"ms": pytest.approx(0.305), "share": pytest.approx(610 / 666, abs=1e-4)}
    assert summary["by_category"]["unknown op"]["ms"] == pytest.approx(0.003)        # a kernel named by no op
    assert summary["top_ops"][0]["op"] == "gemm.7" and summary["top_ops"][0]["launches_per_call"] == 1.0
    assert summary["by_scope"][1]["scope"] == "fwd LlamaModel/LlamaModel._layers/layers_*/self_attn/exp"
    # a kernel that carries no op name is found under its fusion's name, "." written "_"
    renamed = profiling.summarise(collections.Counter({"gemm_7": 100.0}), collections.Counter({"gemm_7": 1}), ops, 1)
    assert renamed["top_ops"][0]["category"] == "matmul"


def test_a_missing_trace_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="create_perfetto_trace=True"):
        profiling.trace_file(tmp_path)


def test_profile_calls_charges_a_programs_time_to_its_matmul(tmp_path):
    """On this CPU, end to end: a large matmul and a small elementwise tail; the matmul's
    line and scope take most of the time."""
    def program(a, b):
        with jax.named_scope("block_7"):
            product = a @ b                                            # the matmul
        return jnp.tanh(product[:8]).sum()

    a = jax.random.normal(jax.random.key(0), (768, 768))
    b = jax.random.normal(jax.random.key(1), (768, 768))
    compiled = jax.jit(program).lower(a, b).compile()
    compiled(a, b).block_until_ready()
    summary = profiling.profile_calls(lambda: compiled(a, b), compiled.as_text(), calls=2, log_dir=tmp_path,
                                      prefer="tests/")
    assert summary["module"] == "jit_program" and summary["calls"] == 2
    assert 0 < summary["op_ms_per_call"] <= 2 * summary["wall_ms_per_call"]      # two cores at most
    top = summary["top_ops"][0]
    assert top["category"] == "matmul" and top["ms"] > 0.5 * summary["op_ms_per_call"]
    assert top["scope"].endswith("block_7/dot_general")
    assert top["source"].startswith("tests/test_profiling.py:") and "(test_profile_calls" in top["source"]
    line = int(top["source"].split(":")[1].split()[0])
    assert "# the matmul" in open(__file__).read().splitlines()[line - 1]
