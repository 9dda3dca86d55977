"""The benchmark harness on tiny sizes: its torch mirror of an ONNX model, its shared data
order, and one small profile run whose JSON, markdown and plot carry every field the
README table needs. No timing is asserted: speed lives in the benchmark's output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from s2lbench import report
from s2lbench.methods import epoch_orders
from s2lbench.onnxnet import OnnxNet, UnsupportedModelError
from s2lbench.profiles import PROFILES
from s2lbench.suite import BenchConfig, run_profile, write_json
from s2lbench.workloads import MODELS, stratified_split
from s2rt.head import AdapterHead
from s2rt.trainer import TrainConfig, train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def torch_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return OnnxNet(model)(torch.from_numpy(x)).numpy()


def test_the_torch_mirror_of_the_har_model_matches_onnxruntime():
    model = onnx.load(MODELS / "har_mlp.onnx")
    x = np.random.default_rng(0).normal(size=(9, 48)).astype(np.float32) * 3
    np.testing.assert_allclose(torch_run(model, x), ort_run(model, x), rtol=1e-4, atol=1e-4)
    assert OnnxNet(model).layer_names == ["fc1", "fc2", "fc3"]


def tiny_cnn() -> onnx.ModelProto:
    """Conv(pad 1) -> BatchNorm -> Clip(0, 6) -> depthwise Conv -> HardSwish, times its HardSigmoid
    gate -> MaxPool -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(1)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32) * 0.5, name)

    inits = [init("c1.weight", 4, 1, 3, 3), init("c1.bias", 4), init("dw.weight", 4, 1, 3, 3), init("fc.weight", 3, 4), init("fc.bias", 3)]
    inits += [numpy_helper.from_array(np.abs(rng.normal(size=4)).astype(np.float32) + 0.5, n) for n in ("bn.scale", "bn.var")]
    inits += [init("bn.bias", 4), init("bn.mean", 4)]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    nodes = [
        helper.make_node("Conv", ["x", "c1.weight", "c1.bias"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"]),
        helper.make_node("Clip", ["b", "lo", "hi"], ["c"]),
        helper.make_node("Conv", ["c", "dw.weight"], ["d0"], group=4, pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["d0"], ["d1"]),
        helper.make_node("HardSigmoid", ["d1"], ["d2"], alpha=1.0 / 6),
        helper.make_node("Mul", ["d1", "d2"], ["d"]),
        helper.make_node("MaxPool", ["d"], ["e"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["e"], ["f"]),
        helper.make_node("Flatten", ["f"], ["g"]),
        helper.make_node("Gemm", ["g", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_the_torch_mirror_runs_conv_graphs_like_onnxruntime():
    model = tiny_cnn()
    onnx.checker.check_model(model)
    x = np.random.default_rng(2).normal(size=(5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(torch_run(model, x), ort_run(model, x), rtol=1e-4, atol=1e-4)
    assert OnnxNet(model).layer_names == ["c1", "dw", "fc"]


def test_the_torch_mirror_names_an_op_it_does_not_know():
    model = tiny_cnn()
    model.graph.node[2].op_type = "Celu"
    with pytest.raises(UnsupportedModelError, match="Celu"):
        OnnxNet(model)


class RecordingSource:
    def __init__(self, n: int, width: int, classes: int) -> None:
        self.X = np.random.default_rng(3).normal(size=(n, width)).astype(np.float32)
        self.F = np.zeros((n, classes), np.float32)
        self.seen: list[np.ndarray] = []

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.seen.append(np.array(idx))
        return self.X[idx], self.F[idx]


def test_every_method_sees_the_batches_s2rt_trains_on():
    n, epochs, batch = 50, 3, 8
    source = RecordingSource(n, 6, 2)
    head = AdapterHead([6], 2, 4.0, 2, [np.ones((2, 6), np.float32)])
    train(head, source, np.arange(n) % 2, TrainConfig(epochs=epochs, batch_size=batch, seed=5))
    expected = [o[i : i + batch] for o in epoch_orders(n, epochs, seed=5) for i in range(0, n, batch)]
    assert [s.tolist() for s in source.seen] == [e.tolist() for e in expected]


def test_the_validation_split_is_stratified_and_disjoint():
    y = np.repeat(np.arange(3), [10, 20, 30])
    keep, held = stratified_split(y, 0.2, seed=0)
    assert not set(keep) & set(held) and len(keep) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [2, 4, 6]


@pytest.fixture(scope="module")
def tiny_result() -> dict:
    config = BenchConfig(
        workloads=("har",),
        methods=("s2rt-skip2lora", "s2rt-skip2lora-nocache", "torch-ft-all", "peft-lora-all-matched"),
        epochs=2,
        repeats=2,
        grid_size=1,
        max_ft=64,
        max_test=48,
        latency_calls=50,
        latency_batch_calls=50,
        floor_epochs=1,
        rss_methods=("s2rt-skip2lora",),
        val_folds=2,
    )
    return run_profile(config, PROFILES["edge"])


def test_a_profile_run_records_every_figure(tiny_result, tmp_path):
    write_json(tmp_path / "edge.json", tiny_result)
    result = json.loads((tmp_path / "edge.json").read_text())
    assert result["profile"] == "edge" and result["threads"] == 1 and result["workloads"]["har"]["failed"] == {}
    w = result["workloads"]["har"]
    assert w["n_ft"] == 64 and w["n_test"] == 48 and 0 <= w["frozen_accuracy"] <= 1
    assert set(w["methods"]) == {"s2rt-skip2lora", "s2rt-skip2lora-nocache", "torch-ft-all", "peft-lora-all-matched"}
    for name, m in w["methods"].items():
        assert m["runs"] == 2 and len(w["runs"][name]) == 2 and {r["seed"] for r in w["runs"][name]} == {0, 1}
        assert 0 <= m["accuracy_mean"] <= 1 and m["accuracy_std"] >= 0 and m["seconds_median"] > 0 and m["trainable"] > 0
        tuning = w["tuning"][name]
        if "shared_with" in tuning:  # the same training as another method: its learning rate
            assert name == "s2rt-skip2lora-nocache" and m["lr"] == w["methods"][tuning["shared_with"]]["lr"]
        else:
            assert m["lr"] in [g["lr"] for g in tuning["grid"]]
        assert m["speedup_vs_torch-ft-all"] > 0 and m["speedup_vs_peft-lora-all-matched"] > 0
    skip2 = w["methods"]["s2rt-skip2lora"]
    assert set(skip2["phases_median"]) == {"frozen_forward", "cache_gather", "decode", "steps", "other"}
    assert skip2["hit_rate"] == 0.5  # two epochs: every sample misses once, then hits
    assert "hit_rate" not in w["methods"]["s2rt-skip2lora-nocache"]
    matched = w["matched_lora_rank"]
    assert matched >= 1 and abs(w["methods"]["peft-lora-all-matched"]["trainable"] - skip2["trainable"]) <= 0.5 * skip2["trainable"]
    for case in ("one", "batch64"):
        lat = w["latency"][case]
        assert {"s2rt_logits", "s2rt_predict", "ort_original", "ratio_p50", "ratio_predict_p50"} <= set(lat)
        assert lat["s2rt_logits"]["p99_us"] >= lat["s2rt_logits"]["p50_us"] > 0
    floor = w["cached_epoch"]
    assert floor["epoch_s"] > 0 and floor["gemm_floor_s"] > 0 and floor["ratio"] > 0
    rss = w["rss"]["s2rt-skip2lora"]
    assert rss["peak_mb"] >= rss["baseline_mb"] > 0 and rss["torch_imported"] is False  # an s2rt run never imports torch


def test_the_report_has_the_tables_and_the_plot(tiny_result, tmp_path):
    text = report.markdown([tiny_result], "results.png")
    for heading in (
        "## Summary",
        "| edge | har | 2 |",
        "## Profile `edge`",
        "### har",
        "| method | trainable params |",
        "s2rt time split",
        "Inference latency",
        "Cached epoch",
    ):
        assert heading in text
    assert "Skip2-LoRA (s2rt)" in text and "LoRA-All r=" in text and "Targets (edge profile, 2 epochs)" in text
    assert "- har: cached epoch " in text and "its GEMM floor (target ≤ 3×)" in text and "cached epoch / GEMM floor |" in text
    report.plot([tiny_result], tmp_path / "results.png")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(tmp_path / "results.png").stat().st_size > 10_000


def test_a_method_that_fails_on_a_workload_is_recorded_and_the_rest_carry_on():
    from s2lbench.context import Context
    from s2lbench.methods import Method, registry
    from s2lbench.suite import timed_rounds, tune
    from s2lbench.workloads import load

    def broken(job, context):
        raise ValueError("no such op")

    workload = load("har").subset(40, 20)
    methods = [registry()["s2rt-skip2lora"], Method("broken", "Broken", "torch", (0.1,), broken)]
    config = BenchConfig(workloads=("har",), epochs=1, repeats=1, grid_size=1, val_folds=2)
    context = Context(workload, PROFILES["edge"], 4, 8.0, {})
    failed: dict[str, str] = {}
    tuned = tune(workload, methods, context, config, PROFILES["edge"], failed)
    assert set(tuned) == {"s2rt-skip2lora"} and failed == {"broken": "ValueError: no such op"}
    runs = timed_rounds(workload, methods, {k: v["lr"] for k, v in tuned.items()}, context, config, PROFILES["edge"], failed)
    assert set(runs) == {"s2rt-skip2lora"} and len(runs["s2rt-skip2lora"]) == 1
