"""seo-export and seo-predict backend=onnx: every model option exports and passes the parity check, both
backends write the same rows, the ONNX path runs without torch, and a tampered or mismatched export is
one sentence naming the file."""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import CONF_DIR, smoke_checkpoint
from helpers.commands import run_command
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from onnx import TensorProto, helper

from seo_cli import export as export_module
from seo_cli import onnx_model
from seo_cli.config import register_configs
from seo_cli.data import seo_pages
from seo_cli.errors import UserError
from seo_cli.export import run_export
from seo_cli.onnx_model import OnnxModel, Sidecar, sidecar_path
from seo_cli.predict import run_predict

TARGETS = ["intent", "quality", "ctr", "position"]
MODELS = ["mlp", "textcnn", "transformer", "seo_multitask"]
# The inputs each model's graph takes on seo_pages (numeric, categorical and text columns).
GRAPH_INPUTS = {
    "mlp": ["numeric", "categorical"],
    "textcnn": ["tokens"],
    "transformer": ["tokens"],
    "seo_multitask": ["numeric", "categorical", "tokens"],
}


def compose_config(name: str, *overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def export(checkpoint: Path, output: Path, *overrides: str) -> dict:
    return run_export(
        compose_config("export", f"checkpoint='{checkpoint}'", f"output='{output}'", *overrides)
    )


def predict(input: Path, output: Path, *overrides: str) -> dict:
    return run_predict(
        compose_config("predict", "device=cpu", f"input='{input}'", f"output='{output}'", *overrides)
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return {
        model: smoke_checkpoint(tmp_path_factory, f"export_{model}", f"model={model}") for model in MODELS
    }


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each model option exported once: (model.onnx, what run_export returned)."""
    folder = tmp_path_factory.mktemp("exports")
    return {
        model: (folder / model / "model.onnx", export(path, folder / model / "model.onnx"))
        for model, path in checkpoints.items()
    }


@pytest.fixture
def graph_of(exports, monkeypatch):
    """Tests of what seo-export does with a graph reuse the fixture's export of ``model`` instead of
    exporting again (2-3 s each): ``to_onnx`` returns its bytes."""

    def use(model: str) -> None:
        data = exports[model][0].read_bytes()
        monkeypatch.setattr(export_module, "to_onnx", lambda graph, inputs, opset: (data, "dynamo"))

    return use


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    """Rows to score as a user has them, with three that cannot be scored."""
    rows = seo_pages.generate_seo_pages(60, seed=5).drop(columns=TARGETS)
    rows = rows.astype({"word_count": object, "backlinks": object})
    rows.loc[3, "word_count"] = "many"
    rows.loc[8, "backlinks"] = "inf"
    rows.loc[11, "word_count"] = ""
    path = tmp_path_factory.mktemp("pages") / "pages.csv"
    rows.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("model", MODELS)
def test_every_model_option_exports_and_matches_pytorch(exports, model):
    path, result = exports[model]
    assert result["exporter"] == "dynamo" and result["rows_from"] == "the validation split"
    assert result["rows"] == 90  # debug=smoke's validation split: all of it, under parity_rows=2000
    assert set(result["fp32"]) == set(TARGETS)
    for name, figures in result["fp32"].items():
        assert figures["max_abs_diff"] <= 1e-4, (name, figures)
        if name in ("intent", "quality"):
            assert figures["class_agreement"] == 1.0
            assert figures["accuracy_onnx"] == figures["accuracy_torch"]
        else:
            assert figures["rmse_onnx"] == pytest.approx(figures["rmse_torch"], rel=1e-5)
    graph = onnx.load(path)
    assert [i.name for i in graph.graph.input] == GRAPH_INPUTS[model]
    assert [o.name for o in graph.graph.output] == TARGETS
    batch = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in graph.graph.input}
    assert all(batch.values()), batch  # a dynamic batch axis on every input
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["inputs"] == GRAPH_INPUTS[model] and sidecar["quantized"] is False
    assert sidecar["export"]["parity"]["fp32"] == result["fp32"]


def test_the_token_axis_is_dynamic(exports):
    """A graph of the transformer scores texts of any length up to max_length, not only the exported one."""
    path, _ = exports["transformer"]
    exported = OnnxModel.load(path)
    rows = seo_pages.generate_seo_pages(6, seed=9)
    for column in exported.preprocessor.text_columns:  # short texts: most of each row is padding
        rows[column] = ["best running shoes", "buy shoes", "shoes", "running", "shoe sale today", "a b"]
    inputs = exported.preprocessor.encode_inputs(rows, ["tokens"])
    full = exported.raw_outputs(inputs, 6)
    width = int((inputs["tokens"] != 0).sum(axis=1).max())  # the longest text's tokens
    assert width < inputs["tokens"].shape[1] // 2
    short = exported.raw_outputs({"tokens": inputs["tokens"][:, :width]}, 6)
    for name in TARGETS:  # padding is masked: cutting it off changes nothing
        np.testing.assert_allclose(short[name], full[name], atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_both_backends_write_the_same_rows_and_rejects(exports, checkpoints, pages, tmp_path, model):
    path, _ = exports[model]
    ours = predict(pages, tmp_path / "torch.csv", f"checkpoint='{checkpoints[model]}'", "id_column=page_id")
    theirs = predict(pages, tmp_path / "onnx.csv", "backend=onnx", f"onnx_file='{path}'", "id_column=page_id")
    assert ours["scored"] == theirs["scored"] == 57 and ours["rejected"] == theirs["rejected"] == 3
    a, b = pd.read_csv(tmp_path / "torch.csv"), pd.read_csv(tmp_path / "onnx.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 57
    assert a["page_id"].tolist() == b["page_id"].tolist()
    for column in ("intent", "quality"):
        assert (a[column] == b[column]).all()
    probabilities = [c for c in a.columns if "_proba_" in c]
    assert np.abs(a[probabilities] - b[probabilities]).to_numpy().max() <= 1e-4
    for column in ("ctr", "position"):  # values in the target's units: the tolerance times its scale
        scale = a[column].abs().max()
        np.testing.assert_allclose(b[column], a[column], atol=1e-4 * scale)
    assert (tmp_path / "torch.rejects.csv").read_bytes() == (tmp_path / "onnx.rejects.csv").read_bytes()


def test_predict_on_an_export_does_not_import_torch(exports, pages, tmp_path):
    """The seo-predict console script with torch made unimportable: model= is the export, and the output
    equals the in-process one."""
    path, _ = exports["seo_multitask"]
    output = tmp_path / "scores.csv"
    script = f"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, NoTorch())
sys.argv = ["seo-predict", "backend=onnx", "model={path}", "input={pages}", "output={output}",
            "hydra.run.dir={tmp_path / "run"}"]
from seo_cli.cli import predict
try:
    predict()
finally:
    print("torch imported:", "torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch imported: False" in result.stdout
    predict(pages, tmp_path / "again.csv", "backend=onnx", f"onnx_file='{path}'")
    assert output.read_bytes() == (tmp_path / "again.csv").read_bytes()


def test_a_difference_beyond_the_tolerance_writes_nothing_and_says_how_large(
    checkpoints, graph_of, tmp_path, monkeypatch
):
    graph_of("mlp")
    original = OnnxModel.raw_outputs

    def off_by_a_little(self, inputs, batch_size):
        return {k: v + np.float32(3e-3) for k, v in original(self, inputs, batch_size).items()}

    monkeypatch.setattr(OnnxModel, "raw_outputs", off_by_a_little)
    output = tmp_path / "model.onnx"
    with pytest.raises(UserError, match=r"differs from PyTorch on target intent: largest difference 0\.003"):
        export(checkpoints["mlp"], output)
    assert not output.exists() and not sidecar_path(output).exists()
    # The same difference inside a looser tolerance is written, with its figures.
    result = export(checkpoints["mlp"], output, "tolerance=0.01")
    assert result["fp32"]["intent"]["max_abs_diff"] == pytest.approx(3e-3, rel=1e-3)
    assert output.exists()


def test_parity_rows_and_a_file_of_rows(checkpoints, graph_of, pages, tmp_path):
    graph_of("mlp")
    result = export(checkpoints["mlp"], tmp_path / "a.onnx", "parity_rows=10")
    assert result["rows"] == 10
    result = export(checkpoints["mlp"], tmp_path / "b.onnx", f"input='{pages}'")
    assert result["rows"] == 57 and result["rows_from"] == str(pages)
    assert "accuracy_torch" not in result["fp32"]["intent"]  # the file has no labels


def test_quantize_writes_int8_weights_and_reports_the_change(checkpoints, exports, graph_of, pages, tmp_path):
    graph_of("transformer")
    output = tmp_path / "int8.onnx"
    result = export(checkpoints["transformer"], output, "quantize=true")
    fp32, _ = exports["transformer"]
    assert result["quantized"] is True
    assert output.stat().st_size < 0.6 * fp32.stat().st_size  # weights from 4 bytes to 1 (embeddings stay)
    graph = onnx.load(output)
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for node in graph.graph.node)
    int8 = result["int8"]
    assert set(int8) == set(TARGETS)
    assert 0 < int8["intent"]["max_abs_diff"] < 0.5  # not exact, not broken
    assert int8["intent"]["class_agreement"] >= 0.9
    assert {"accuracy_torch", "accuracy_onnx"} <= set(int8["intent"])
    assert json.loads(sidecar_path(output).read_text())["quantized"] is True
    scored = predict(pages, tmp_path / "scores.csv", "backend=onnx", f"onnx_file='{output}'")
    assert scored["scored"] == 57


def test_the_torchscript_exporter_takes_over_where_dynamo_fails(checkpoints, tmp_path, monkeypatch):
    export_onnx = export_module.torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("unsupported operator for this test")
        return export_onnx(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(export_module.torch.onnx, "export", no_dynamo)
    result = export(checkpoints["textcnn"], tmp_path / "model.onnx")
    assert result["exporter"] == "torchscript"
    assert max(f["max_abs_diff"] for f in result["fp32"].values()) <= 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["output=model.pt"], "output=model.pt must end in .onnx"),
        (["parity_rows=0"], "parity_rows=0 must be at least 1"),
        (["tolerance=-1"], "tolerance=-1.0 must be a number of at least 0"),
        (["min_class_agreement=1.5"], "min_class_agreement=1.5 must be a share from 0 to 1"),
        (["opset=9"], "opset=9 must be from 17 to 21"),
        (["input=missing.csv"], "missing.csv"),
    ],
)
def test_export_knobs_out_of_range_are_one_sentence(checkpoints, tmp_path, overrides, message):
    config = compose_config(
        "export", f"checkpoint='{checkpoints['mlp']}'", f"output='{tmp_path}/m.onnx'", *overrides
    )
    with pytest.raises(UserError, match=message):
        run_export(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["backend=onnx"], "backend=onnx scores an export: give model=<file>.onnx"),
        (["backend=onnx", "onnx_file=m.onnx", "checkpoint=x.pt"], "drop checkpoint=, or drop backend=onnx"),
        (["onnx_file=m.onnx"], "add backend=onnx or drop model="),
        ([], "give checkpoint=<file>.pt to score with"),
    ],
)
def test_predict_names_the_file_each_backend_needs(pages, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        predict(pages, tmp_path / "out.csv", *overrides)


def test_the_commands_as_typed(checkpoints, pages, tmp_path):
    done = run_command(
        "export",
        f"checkpoint={checkpoints['mlp']}",
        f"output={tmp_path}/m.onnx",
        f"hydra.run.dir={tmp_path}/export",
    )
    assert done.code == 0, done.output
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.json").is_file()
    assert (tmp_path / "export" / "export.log").is_file()
    done = run_command(
        "predict",
        "backend=onnx",
        f"model={tmp_path}/m.onnx",
        f"input={pages}",
        f"output={tmp_path}/scores.parquet",
        f"hydra.run.dir={tmp_path}/predict",
    )
    assert done.code == 0, done.output
    assert len(pd.read_parquet(tmp_path / "scores.parquet")) == 57
    done = run_command(
        "predict",
        "backend=onnx",
        f"model={tmp_path}/none.onnx",
        f"input={pages}",
        f"output={tmp_path}/x.csv",
        f"hydra.run.dir={tmp_path}/bad",
    )
    assert done.code == 1 and "Traceback" not in done.output
    assert f"sidecar {tmp_path}/none.json does not exist" in done.output


# --- tampered and mismatched exports ---------------------------------------------------------------


@pytest.fixture
def copy_of(exports, tmp_path):
    """A fresh copy of an export's two files, to tamper with: returns (model.onnx, model.json)."""

    def make(model: str = "mlp") -> tuple[Path, Path]:
        path, _ = exports[model]
        target = tmp_path / model / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        sidecar_path(target).write_bytes(sidecar_path(path).read_bytes())
        return target, sidecar_path(target)

    return make


def rewrite(sidecar: Path, change) -> None:
    state = json.loads(sidecar.read_text())
    change(state)
    sidecar.write_text(json.dumps(state))


def with_graph(path: Path, graph_bytes: bytes) -> None:
    """Replace the ONNX file and make the sidecar name it, as an attacker who controls both would."""
    path.write_bytes(graph_bytes)
    rewrite(sidecar_path(path), lambda s: s.update(onnx_sha256=hashlib.sha256(graph_bytes).hexdigest()))


def tiny_graph(nodes, inputs, outputs, domain="", initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def mlp_io(num_numeric: int = 9):
    inputs = [
        helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["batch", num_numeric]),
        helper.make_tensor_value_info("categorical", TensorProto.INT64, ["batch", 1]),
    ]
    outputs = [
        helper.make_tensor_value_info("intent", TensorProto.FLOAT, ["batch", 4]),
        helper.make_tensor_value_info("quality", TensorProto.FLOAT, ["batch", 2]),
        helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info("position", TensorProto.FLOAT, ["batch"]),
    ]
    return inputs, outputs


def external_data_graph() -> bytes:
    """A graph whose weight is read from /etc/passwd: scoring would leak any file into the outputs."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0, 0, 0, 0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../../etc/passwd")
    inputs, outputs = mlp_io()
    return tiny_graph(
        [helper.make_node("Identity", ["w"], ["intent"])], inputs, outputs[:1], initializers=[weight]
    )


def memory_bomb_graph() -> bytes:
    """About 30 bytes that ask for 12 GB when run: a ConstantOfShape of 3e9 floats."""
    inputs, outputs = mlp_io()
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 3_000_000_000])
    nodes = [
        helper.make_node("Constant", [], ["s"], value=shape),
        helper.make_node("ConstantOfShape", ["s"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Shape", ["numeric"], ["n"], start=0, end=1),
        helper.make_node("Expand", ["total", "n"], ["ctr"]),
    ]
    nodes += [  # the other outputs, shaped as the sidecar says (Slice's last input: axes=[1])
        helper.make_node("Slice", ["numeric", "zero", "four", "one"], ["intent"]),
        helper.make_node("Slice", ["numeric", "zero", "two", "one"], ["quality"]),
        helper.make_node("Identity", ["ctr"], ["position"]),
    ]
    constants = [
        helper.make_tensor(name, TensorProto.INT64, [1], [value])
        for name, value in (("zero", 0), ("four", 4), ("two", 2), ("one", 1))
    ]
    return tiny_graph(nodes, *mlp_io(), initializers=constants)


CASES = {
    "sidecar missing": (lambda m, s: s.unlink(), "sidecar {s} does not exist"),
    "sidecar not JSON": (lambda m, s: s.write_text("{not json"), "sidecar {s} is not JSON"),
    "sidecar nested deep": (lambda m, s: s.write_text("[" * 100_000), "sidecar {s} is not JSON"),
    "sidecar of another format": (
        lambda m, s: rewrite(s, lambda d: d.update(format="other")),
        "sidecar {s}: format must be",
    ),
    "sidecar with a field it never has": (
        lambda m, s: rewrite(s, lambda d: d.update(_target_="os.system")),
        "sidecar {s}: '_target_' must be absent",
    ),
    "max_length of 5e6": (
        lambda m, s: rewrite(s, lambda d: d["preprocessing"].update(max_length=5_000_000)),
        "sidecar {s}: preprocessing.max_length must be a whole number from 1 to 8192",
    ),
    "class names that are not a list": (
        lambda m, s: rewrite(s, lambda d: d["preprocessing"]["targets"][0].update(classes={"a": 1})),
        r"sidecar {s}: preprocessing.targets\[0\].classes must be",
    ),
    "scale of zero": (
        lambda m, s: rewrite(s, lambda d: d["preprocessing"].update(numeric_scale=[0.0] * 9)),
        "sidecar {s}: preprocessing.numeric_scale must be 9 finite numbers above 0",
    ),
    "an input the preprocessing does not make": (
        lambda m, s: rewrite(s, lambda d: d.update(inputs=["numeric", "pixels"])),
        "sidecar {s}: inputs must be a list of the model's inputs",
    ),
    "missing policy unknown": (
        lambda m, s: rewrite(s, lambda d: d.update(missing="guess")),
        "sidecar {s}: missing must be 'error' or 'impute'",
    ),
    "graph edited after export": (
        lambda m, s: m.write_bytes(m.read_bytes()[:-10] + b"0123456789"),
        "ONNX file {m} is not the model its sidecar {s} was written for",
    ),
    "graph of another model": (
        lambda m, s: m.write_bytes((m.parent.parent / "exports_other.onnx").read_bytes()),
        "ONNX file {m} is not the model its sidecar {s} was written for",
    ),
    "graph missing": (lambda m, s: m.unlink(), "ONNX file {m} does not exist"),
    "truncated graph, hash updated": (
        lambda m, s: with_graph(m, m.read_bytes()[: len(m.read_bytes()) // 2]),
        "ONNX file {m}: it is not an ONNX model",
    ),
    "graph of another model, hash updated": (
        lambda m, s: with_graph(m, (m.parent.parent / "exports_other.onnx").read_bytes()),
        r"ONNX file {m} takes the inputs \['tokens'\]",
    ),
    "external data": (
        lambda m, s: with_graph(m, external_data_graph()),
        "it keeps tensors in external files",
    ),
    "a custom operator set": (
        lambda m, s: with_graph(
            m,
            tiny_graph(
                [helper.make_node("Evil", ["numeric"], ["intent"], domain="evil.ops")],
                *mlp_io(),
                domain="evil.ops",
            ),
        ),
        "it imports the operator set 'evil.ops'",
    ),
    "control flow": (
        lambda m, s: with_graph(
            m,
            tiny_graph(
                [
                    helper.make_node(
                        "Loop",
                        ["n", ""],
                        ["intent"],
                        body=helper.make_graph([], "body", [], []),
                    )
                ],
                *mlp_io(),
            ),
        ),
        r"it has control flow \(Loop\)",
    ),
    "outputs of the wrong shape": (
        lambda m, s: with_graph(
            m,
            tiny_graph(
                [helper.make_node("Identity", ["numeric"], name) for name in (["intent"], ["quality"])]
                + [helper.make_node("ReduceSum", ["numeric"], [n], keepdims=0) for n in ("ctr", "position")],
                mlp_io()[0],
                [
                    helper.make_tensor_value_info("intent", TensorProto.FLOAT, ["batch", 9]),
                    helper.make_tensor_value_info("quality", TensorProto.FLOAT, ["batch", 9]),
                    helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["batch"]),
                    helper.make_tensor_value_info("position", TensorProto.FLOAT, ["batch"]),
                ],
            ),
        ),
        "output 'intent' is tensor\\(float\\) of shape \\['batch', 9\\]",
    ),
    "memory bomb": (
        lambda m, s: with_graph(m, memory_bomb_graph()),
        "needs more than the 4 GB allowed; lower batch_size",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_or_mismatched_export_is_one_sentence_naming_the_file(
    copy_of, exports, pages, tmp_path, case
):
    model, sidecar = copy_of("mlp")
    (model.parent.parent / "exports_other.onnx").write_bytes(exports["textcnn"][0].read_bytes())
    tamper, message = CASES[case]
    tamper(model, sidecar)
    start = time.monotonic()
    with pytest.raises(UserError) as refused:
        predict(pages, tmp_path / "out.csv", "backend=onnx", f"onnx_file='{model}'")
    text = str(refused.value)
    assert re_search(message.format(m=model, s=sidecar), text), text
    assert "\n" not in text and len(text) < 600
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out.csv").exists()


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_an_oversized_sidecar_is_refused_before_it_is_read(copy_of, pages, tmp_path, monkeypatch):
    model, sidecar = copy_of("mlp")
    monkeypatch.setattr(onnx_model, "MAX_SIDECAR_BYTES", sidecar.stat().st_size - 1)
    with pytest.raises(UserError, match=f"sidecar {sidecar} is larger than"):
        predict(pages, tmp_path / "out.csv", "backend=onnx", f"onnx_file='{model}'")


def test_sidecar_parse_accepts_what_export_writes(exports):
    path, _ = exports["seo_multitask"]
    checked = Sidecar.read(sidecar_path(path))
    assert checked.inputs == GRAPH_INPUTS["seo_multitask"] and checked.missing == "error"
    assert [t.name for t in checked.targets] == TARGETS


@pytest.mark.parametrize(
    ("command", "argv", "key"),
    [("export", ["checkpoint=x.pt"], "output"), ("evaluate", [], "checkpoint"), ("export", [], "checkpoint")],
)
def test_a_required_key_left_unset_is_one_sentence(tmp_path, command, argv, key):
    done = run_command(command, *argv, f"hydra.run.dir={tmp_path}")
    assert done.code == 1 and "Traceback" not in done.output
    assert f"{key} has no value; give {key}=... on the command line." in done.output
