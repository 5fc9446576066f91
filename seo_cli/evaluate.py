"""seo-eval: rebuild a model and its preprocessing from a checkpoint alone, and report its metrics.

seo-eval checkpoint=outputs/train/<date>/<time>/checkpoints/best.pt [split=test|val|train]
"""

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seo_cli.checkpoint import check_target_allowed, load_checkpoint
from seo_cli.config import DataConfig, config_dir, register_configs
from seo_cli.console import confusion_table, metrics_table, print_table
from seo_cli.data.batches import make_batches
from seo_cli.data.pipeline import SPLITS, load_split
from seo_cli.data.preprocess import Preprocessor
from seo_cli.data.spec import CLASSIFICATION, Target
from seo_cli.errors import UserError
from seo_cli.runtime import pick_device
from seo_cli.trainer import evaluate
from seo_cli.validation import allowed_prefixes

log = logging.getLogger(__name__)

register_configs()


def run_eval(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluate ``cfg.checkpoint`` on ``cfg.split`` of the data it was trained on; write ``metrics.json``.

    Returns:
        ``{"checkpoint", "split", "rows", "metrics": {flat scalars}, "targets": {full report per target}}``.

    Raises:
        UserError: a missing or foreign checkpoint, a ``_target_`` outside the allow-list, a bad split.
    """
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split!r} is not a split; use one of {', '.join(SPLITS)}.")
    state = load_checkpoint(cfg.checkpoint)
    train_cfg = OmegaConf.create(state["config"])
    prefixes = allowed_prefixes(cfg.allowed_targets)
    # Checked before anything named by the checkpoint is imported or built.
    for key in ("model", "loss"):
        check_target_allowed(
            str(train_cfg[key].get("_target_")), f"{key}._target_ in the checkpoint", prefixes
        )

    device = pick_device(cfg.device.type, cfg.device.fallback)
    pre = Preprocessor.from_state(state["preprocessing"])
    targets = [Target(t.name, t.type) for t in pre.targets]
    model = instantiate(train_cfg.model, inputs=pre.input_spec, heads=pre.heads, _convert_="object")
    model.load_state_dict(state["model"])
    model.to(device)
    loss_fn = instantiate(
        train_cfg.loss, targets=targets, class_counts=state["class_counts"], _convert_="object"
    )
    loss_fn.to(device)

    data_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), train_cfg.data))
    split = load_split(data_cfg, train_cfg.seed, pre, cfg.split)
    batches = make_batches(
        split.inputs,
        split.targets,
        batch_size=cfg.eval_batch_size,
        device=device,
        placement=data_cfg.placement,
        num_workers=data_cfg.num_workers,
        pin_memory=data_cfg.pin_memory,
    )
    metrics, reports = evaluate(
        model, batches, loss_fn, targets, cfg.split, pre.target_scale, pre.class_names
    )

    result = {
        "checkpoint": str(cfg.checkpoint),
        "epoch": state.get("epoch"),
        "split": cfg.split,
        "rows": len(split),
        "metrics": metrics,
        "targets": reports,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    for t in targets:
        prefix = f"{cfg.split}/{t.name}/"
        scalars = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        print_table(
            metrics_table(f"{t.name} ({t.type}) on {cfg.split}, {len(split)} rows", {cfg.split: scalars})
        )
        if t.type == CLASSIFICATION:
            print_table(confusion_table(t.name, reports[t.name]))
    log.info("Wrote %s", run_dir / "metrics.json")
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_eval(cfg, run_dir)
    except UserError as err:
        log.error("%s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
