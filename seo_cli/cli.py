"""The console scripts seo-train, seo-eval, seo-predict and seo-export: the project's only ``@hydra.main``
functions.

Kept light: Hydra composes the config (and answers ``--help`` or ``--cfg job``) before torch,
scikit-learn or the data code is imported. Between a console script and ``optimizer.step()`` there are
three seo_cli frames: ``cli.train`` -> ``train.train`` -> ``trainer.fit``.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seo_cli.config import config_dir, register_configs

register_configs()  # once, for the four commands


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def train(cfg: DictConfig) -> float | None:
    from seo_cli import distributed, launch, scheduler
    from seo_cli.errors import exit_on_user_error
    from seo_cli.train import cross_validate
    from seo_cli.train import train as train_model

    job = launch.Job.from_hydra()
    with exit_on_user_error():
        scheduler.check_submitted(HydraConfig.get().runtime.choices.get("hydra/launcher", ""), job.multirun)
    # DDP workers of our own, unless torchrun or a cluster scheduler started this process as one rank of several.
    if cfg.device.strategy == "ddp" and not distributed.in_worker() and not scheduler.in_job():
        launch.start_workers(cfg, job)
        return job.finish()
    with job.outcome(cfg):
        # cv.folds: one train() per fold (a fourth seo_cli frame, cross_validate, above it); cv.fold: that one.
        folds = cfg.cv.folds and cfg.cv.fold is None
        job.summary = (cross_validate if folds else train_model)(cfg, job.run_dir)
    return job.finish()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    from seo_cli.errors import exit_on_user_error
    from seo_cli.evaluate import run_eval

    with exit_on_user_error():
        run_eval(cfg, Path(HydraConfig.get().runtime.output_dir))


def predict() -> None:
    """seo-predict. ``model=<file>.onnx`` names the export to score: Hydra would read ``model=`` as the
    training configs' model group, so it is passed on as ``onnx_file=`` (seo-predict has no model group)."""
    sys.argv[1:] = [f"onnx_file={arg[6:]}" if arg.startswith("model=") else arg for arg in sys.argv[1:]]
    predict_rows()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def predict_rows(cfg: DictConfig) -> None:
    from seo_cli.errors import exit_on_user_error
    from seo_cli.predict import run_predict

    with exit_on_user_error():
        run_predict(cfg)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def export(cfg: DictConfig) -> None:
    from seo_cli.errors import exit_on_user_error
    from seo_cli.export import run_export

    with exit_on_user_error():
        run_export(cfg)
