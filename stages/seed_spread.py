"""Seed spread: mean ± sd of the headline figures of every method over a sweep of DVC experiments.

Not a pipeline stage: run it after the seeds recipe (README, "Spread over seeds"), e.g.

    python -m stages.seed_spread --prefix seed --figures recall@5 correlation auprc

It reads `dvc exp show --json` (or a file saved from it with ``--show``), keeps the experiments
whose name starts with ``--prefix``, and prints one Markdown table (``--out`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path

from lavise.io import atomic_path
from lavise.report.spread import FIGURES, METRICS_FILE, experiments_of, format_table, lookup, spread_rows
from stages.cli import run_stage

log = logging.getLogger("stages.seed_spread")

SEED_KEYS = ("target.seed", "train.seed")  # the params the recipe varies, shown per experiment


def read_show(path: Path | None) -> list:
    """`dvc exp show --json` output: from ``path`` when given, else by running DVC here."""
    if path is not None:
        return json.loads(path.read_text())
    done = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ValueError(f"`dvc exp show --json` failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="", help="only experiments whose name starts with this")
    parser.add_argument("--figures", nargs="+", default=list(FIGURES), help="figures of each method block")
    parser.add_argument("--metrics-file", default=METRICS_FILE)
    parser.add_argument("--show", type=Path, default=None, help="a saved `dvc exp show --json` output")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    experiments = experiments_of(read_show(args.show), args.prefix, args.metrics_file)
    for experiment in experiments:
        seeds = ", ".join(f"{key}={lookup(experiment.params, key)}" for key in SEED_KEYS)
        log.info("experiment %s: %s", experiment.name, seeds)
    table = format_table(spread_rows(experiments, args.figures), args.figures)
    print(table)
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            tmp.write_text(table + "\n")


if __name__ == "__main__":
    run_stage(main)
