"""Run seo-train in this process and hit it with a fault at an exact point, as a crash or an operator would.

    python tests/helpers/fault_inject.py --kill-at-step 60 -- debug=smoke epochs=4 hydra.run.dir=...
    python tests/helpers/fault_inject.py --signal-at-step 40 --signal SIGTERM -- ...
    python tests/helpers/fault_inject.py --kill-in-save 3 -- ...

``--kill-at-step N`` sends SIGKILL once N optimizer steps are done (before step N+1's forward pass);
``--signal-at-step`` sends the named signal there instead, which the trainer handles (with
``--signal-again-in-save``, once more as the checkpoint that signal asked for is being written);
``--kill-in-save K`` sends SIGKILL half-way through writing the K-th checkpoint file, after half its
bytes hit the disk.
Test code only: the faults are injected by wrapping functions, seo_cli has no hooks for them.
"""

import argparse
import io
import os
import signal
import sys

import torch

import seo_cli.trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--signal-at-step", type=int)
    parser.add_argument("--signal", default="SIGTERM")
    parser.add_argument("--kill-in-save", type=int)
    parser.add_argument("--signal-again-in-save", action="store_true")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]

    forward_backward = seo_cli.trainer.forward_backward
    windows = iter(range(1, 10**9))
    signalled: list[int] = []

    def faulty_forward_backward(*a, **kw):
        window = next(windows)  # 1-based: window N+1 starts once N optimizer steps are done
        if args.kill_at_step is not None and window == args.kill_at_step + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.signal_at_step is not None and window == args.signal_at_step + 1:
            os.kill(os.getpid(), signal.Signals[args.signal])
            signalled.append(window)
        return forward_backward(*a, **kw)

    seo_cli.trainer.forward_backward = faulty_forward_backward

    save = torch.save
    saves = iter(range(1, 10**9))

    def faulty_save(obj, f, *a, **kw):
        if args.signal_again_in_save and signalled:  # the save the first signal asked for: signal again
            signalled.clear()
            os.kill(os.getpid(), signal.Signals[args.signal])
        if next(saves) != args.kill_in_save:
            return save(obj, f, *a, **kw)
        buffer = io.BytesIO()
        save(obj, buffer, *a, **kw)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = faulty_save

    from seo_cli.cli import train as seo_train

    sys.argv = ["seo-train", *overrides]
    seo_train()


if __name__ == "__main__":
    main()
