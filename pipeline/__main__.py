"""``python -m pipeline``: the DICOM-to-Schatzker pipeline, one command per stage.

Each sub-command lives beside the code it drives: the module named in ``COMMANDS``
provides ``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported
only when their command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": (
        "pipeline.synth.cli",
        "generate the synthetic knee-radiograph phantom set (DICOM + labels CSV)",
    ),
    "scan": (
        "pipeline.dicom_cli",
        "read every DICOM file of a folder; report skipped files in a CSV",
    ),
    "deid": (
        "pipeline.deid_cli",
        "write de-identified copies of a DICOM folder (PS3.15 basic profile)",
    ),
    "preprocess": (
        "pipeline.preprocess.cli",
        "build the preprocessing cache; --sheet draws every step",
    ),
    "train-localizer": (
        "pipeline.preprocess.localizer_cli",
        "train the HOG + linear SVM knee localizer",
    ),
    "split": (
        "pipeline.data.cli",
        "fold readers' labels, filter views and write patient-grouped splits",
    ),
    "train": (
        "pipeline.train_cli",
        "run one training trial from a YAML config, without Ray or W&B",
    ),
    "explain": ("pipeline.explain.cli", "GradCAM / LRP gallery for a trained model"),
    "rank-unlabeled": (
        "pipeline.active.cli",
        "rank unlabeled images by how much labelling them would help",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        parser.parse_args(argv)  # argparse prints the valid choices and exits 2
        return 2
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"python -m pipeline {name}: not available in this version", file=sys.stderr)
            return 2
        raise
    cmd = argparse.ArgumentParser(prog=f"python -m pipeline {name}", description=help_text)
    module.add_arguments(cmd)
    return int(module.main(cmd.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
