"""``python -m pipeline train CONFIG.yaml``: one trial without Ray or W&B.

CONFIG.yaml is a flat mapping of trial keys (``python -m pipeline train --keys`` lists
them with their defaults); ``--set key=value`` overrides one (YAML syntax for the value).
With ``--out DIR`` the resolved configuration, the per-epoch rows and the final metrics
are written there and checkpoints go to ``DIR/checkpoint`` (run again to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.io import atomic_write_json, atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", type=Path, help="YAML file of trial keys")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one key"
    )
    parser.add_argument("--out", type=Path, help="folder for config, metrics and checkpoints")
    parser.add_argument("--keys", action="store_true", help="list the trial keys and defaults")


def load_config(path: Path | None, overrides: list[str]) -> dict[str, Any]:
    """The flat trial configuration from a YAML file plus ``key=value`` overrides."""
    config: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"{path}: a trial configuration is a YAML mapping of keys to values")
        config.update(loaded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        config[key.strip()] = yaml.safe_load(value)
    return config


def main(args: argparse.Namespace) -> int:
    from pipeline.trial import TrialConfigError, TrialError, run_trial, trial_keys

    if args.keys:
        for key, default in trial_keys().items():
            print(f"{key}: {default!r}")
        return 0
    config = load_config(args.config, args.set)
    rows: list[dict[str, Any]] = []
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        config.setdefault("checkpoint_dir", str(args.out / "checkpoint"))

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        shown = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in row.items()
            if k
            in ("epoch", "train/loss", "val/loss", "val/auroc", "val/macro_f1", "train/mask_rate")
        }
        print(json.dumps(shown), flush=True)
        if args.out is not None:
            atomic_write_text(
                args.out / "history.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
            )

    try:
        metrics = run_trial(config, report)
    except TrialConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except TrialError as e:
        print(f"trial failed: {e}", file=sys.stderr)
        return 1
    if args.out is not None:
        from pipeline.trial import TrialConfig

        atomic_write_text(
            args.out / "config.yaml", yaml.safe_dump(TrialConfig.from_dict(config).to_dict())
        )
        atomic_write_json(args.out / "metrics.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if not k.startswith("train/")}, default=str))
    return 0
