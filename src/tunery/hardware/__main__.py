"""``python -m tunery.hardware``: one line on what this machine is and which precision ``auto`` picks here."""

from __future__ import annotations

import os
import sys

import torch

from tunery.hardware.precision import cpu_model, fastest_format

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def main() -> None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        line = ""
    present = [flag for flag in FLAGS if f" {flag} " in f"{line.rstrip()} "]
    sys.stdout.write(
        f"CPU: {cpu_model()} · {os.cpu_count()} cores · flags: {' '.join(present) or 'none of ' + ' '.join(FLAGS)}"
        f" · torch {torch.__version__} · measured fastest: training {fastest_format('autocast')},"
        f" serving {fastest_format('weights')}\n"
    )


if __name__ == "__main__":
    main()
