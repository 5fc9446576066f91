"""The console entry points seo-train, seo-eval and seo-predict, kept light: Hydra composes the config
(and answers ``--help`` or ``--cfg job``) before torch, scikit-learn or the data code is imported."""

import hydra
from omegaconf import DictConfig

from seo_cli.config import config_dir, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def train(cfg: DictConfig) -> float | None:
    from seo_cli.train import job

    return job(cfg)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    from seo_cli.evaluate import job

    return job(cfg)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def predict(cfg: DictConfig) -> None:
    from seo_cli.predict import job

    return job(cfg)
