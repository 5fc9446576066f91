"""The console scripts seo-train, seo-eval and seo-predict: the project's only ``@hydra.main`` functions.

Kept light: Hydra composes the config (and answers ``--help`` or ``--cfg job``) before torch,
scikit-learn or the data code is imported. Between a console script and ``optimizer.step()`` there are
three seo_cli frames: ``cli.train`` -> ``train.train`` -> ``trainer.fit``.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seo_cli.config import config_dir, register_configs

register_configs()  # once, for the three commands


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def train(cfg: DictConfig) -> float | None:
    from seo_cli import distributed, launch
    from seo_cli.train import train as train_model

    job = launch.Job.from_hydra()
    if cfg.device.strategy == "ddp" and not distributed.in_worker():
        launch.start_workers(cfg, job)
        return job.finish()
    with job.outcome(cfg):
        job.summary = train_model(cfg, job.run_dir)
    return job.finish()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    from seo_cli.errors import exit_on_user_error
    from seo_cli.evaluate import run_eval

    with exit_on_user_error():
        run_eval(cfg, Path(HydraConfig.get().runtime.output_dir))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def predict(cfg: DictConfig) -> None:
    from seo_cli.errors import exit_on_user_error
    from seo_cli.predict import run_predict

    with exit_on_user_error():
        run_predict(cfg)
