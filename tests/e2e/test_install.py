"""A non-editable ``pip install .`` into a fresh virtual environment runs ``seo-train`` from any directory:
the config tree ships inside the wheel."""

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_wheel_install_runs_seo_train_outside_the_checkout(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".git", "outputs", "build", "*.egg-info", "__pycache__")
    )
    env_dir = tmp_path / "venv"
    # A plain venv, as a user makes one. The dependencies (torch alone is GBs to fetch) come from this
    # test's own environment, a plain venv or not, through a .pth line after the venv's own packages: the
    # venv's seo_cli shadows the checkout, whose editable-install hook is not run from such a path.
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    outer = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (Path(purelib) / "outer_environment.pth").write_text("".join(f"{path}\n" for path in sorted(outer)))
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    shutil.rmtree(source)  # nothing may be read from the source tree after installing

    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run(
        [str(env_dir / "bin" / "seo-train"), "debug=smoke", "logger=none", "hydra.run.dir=run"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((work / "run" / "summary.json").read_text())["status"] == "ok"
    located = subprocess.run(
        [str(python), "-c", "import seo_cli.config as c; print(c.config_dir())"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert located.stdout.strip().startswith(str(env_dir))
    assert (Path(located.stdout.strip()) / "model" / "seo_multitask.yaml").is_file()
