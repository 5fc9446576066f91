"""The shape of the training path: three seo_cli frames from a command to ``optimizer.step()``, a loop
that fits on a screen, and no import cycle among seo_cli's modules (lazy imports inside functions count).
The frames in each DDP worker are counted in tests/test_ddp.py, on the DDP run its other tests share."""

import ast
import json
import sys
import traceback
from pathlib import Path

from torch.optim.optimizer import register_optimizer_step_pre_hook

import seo_cli

PACKAGE = Path(seo_cli.__file__).resolve().parent
REPO = PACKAGE.parent


def seo_cli_frames(stack: list[traceback.FrameSummary]) -> list[str]:
    """``module.function`` of each seo_cli frame, outermost first; a script's ``<module>`` frame (what
    ``python -m`` or ``python -c`` runs) is the command itself, not a frame between it and the step."""
    frames = []
    for frame in stack:
        path = Path(frame.filename).resolve()
        if PACKAGE in path.parents and frame.name != "<module>":
            frames.append(f"{path.relative_to(PACKAGE).with_suffix('').as_posix().replace('/', '.')}.{frame.name}")
    return frames


def test_three_seo_cli_frames_from_the_console_script_to_optimizer_step(tmp_path, monkeypatch):
    from seo_cli.cli import train

    seen: list[list[str]] = []

    def record(optimizer, args, kwargs):
        seen.append(seo_cli_frames(traceback.extract_stack()))

    handle = register_optimizer_step_pre_hook(record)
    monkeypatch.setattr(
        sys,
        "argv",
        ["seo-train", "debug=smoke", "model=mlp", "logger=none", "device=cpu", "data.num_rows=100",
         "trainer.progress=plain", f"hydra.run.dir={tmp_path}"],
    )  # fmt: skip
    try:
        train()
    finally:
        handle.remove()
    assert len(seen) == json.loads((tmp_path / "summary.json").read_text())["global_step"] > 0
    assert {tuple(frames) for frames in seen} == {("cli.train", "train.train", "trainer.fit")}


def module_imports(path: Path) -> set[str]:
    """The seo_cli modules ``path`` imports anywhere in it (inside functions too)."""
    name = path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
    found = set()
    tree = ast.parse(path.read_text())
    # Code under `if __name__ == "__main__":` runs only as a script (python -m), as another module object.
    tree.body = [node for node in tree.body if not (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("seo_cli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seo_cli"):
            for alias in node.names:  # `from seo_cli import distributed` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (REPO / (sub.replace(".", "/") + ".py")).exists() else node.module)
    found.discard(name)
    return found


def test_no_import_cycle_among_seo_cli_modules():
    graph = {
        path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): module_imports(path)
        for path in PACKAGE.rglob("*.py")
    }
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        for imported in sorted(graph.get(module, ())):
            if imported in trail:
                cycles.append(trail[trail.index(imported) :] + [imported])
            elif imported not in done:
                visit(imported, [*trail, imported])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == []
    assert graph["seo_cli.distributed"] == set()  # a leaf: collectives only


def test_fit_fits_on_a_screen():
    tree = ast.parse((PACKAGE / "trainer.py").read_text())
    fit = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "fit")
    assert fit.end_lineno - fit.lineno + 1 <= 100

    def depth(node: ast.AST, level: int = 0) -> int:
        nested = (ast.For, ast.While, ast.If, ast.With, ast.Try)
        children = [depth(child, level + isinstance(child, nested)) for child in ast.iter_child_nodes(node)]
        return max(children, default=level)

    assert depth(fit) <= 5
    steps = [
        node
        for node in ast.walk(fit)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "step"
    ]
    assert any(ast.unparse(call) == "scaler.step(optimizer)" for call in steps)  # optimizer.step(), in fit


def test_one_hydra_main_per_command_all_in_cli_and_configs_registered_once():
    mains, registrations = [], []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any("hydra.main" in ast.unparse(d) for d in node.decorator_list):
                mains.append(f"{path.name}:{node.name}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "register_configs":
                registrations.append(path.name)
    # seo-predict's console script (cli.predict) passes model= on as onnx_file= to predict_rows.
    assert sorted(mains) == ["cli.py:evaluate", "cli.py:export", "cli.py:predict_rows", "cli.py:train"]
    assert registrations == ["cli.py"]
