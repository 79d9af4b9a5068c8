"""``python -m search``: run, resume and inspect hyperparameter searches.

    python -m search validate spaces/fixmatch.yaml
    python -m search run spaces/fixmatch.yaml --name demo
    python -m search status results/demo
    python -m search resume results/demo
    python -m search best results/demo
    python -m search report results/demo
    python -m search promote results/demo
    python -m search list losses

A thin shell over the ``search`` package; every command returns 0 on success, 1 when
a search or a final run failed or was interrupted, and 2 for invalid input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pipeline
from search.problems import SpaceError


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _add_budget_overrides(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budget overrides (default: the space's budget section)")
    g.add_argument("--trials", type=int, help="total number of trials")
    g.add_argument(
        "--concurrency", type=int, help="trials at once (capped at what fits the cluster)"
    )
    g.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (also its threads)")
    g.add_argument(
        "--gpus-per-trial", type=float, help="GPUs per trial; fractions share a GPU (0.5)"
    )
    g.add_argument("--epochs", type=int, help="epochs per trial")
    g.add_argument("--time-budget-s", type=float, help="wall-clock cap per trial, in seconds")
    g.add_argument(
        "--scheduler", choices=("asha", "ax", "none"), help="early stopping: ASHA, Ax's, or none"
    )
    g.add_argument(
        "--algorithm", choices=("botorch", "sobol", "random", "tpe"), help="proposal algorithm"
    )
    p.add_argument(
        "--wandb", choices=("online", "offline", "disabled"), help="W&B mode (default: the space's)"
    )
    p.add_argument(
        "--address", help="join a Ray cluster: 'auto' or HOST:PORT (default: a local Ray)"
    )
    p.add_argument(
        "--trainable",
        metavar="MODULE:FUNCTION",
        help="another function with run_trial's signature (MODULE:FN or FILE.py:FN)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no live table (one line per finished trial)"
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "trials": args.trials,
        "concurrency": args.concurrency,
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial,
        "epochs": args.epochs,
        "time_budget_s": args.time_budget_s,
        "scheduler": args.scheduler,
        "algorithm": args.algorithm,
        "wandb": args.wandb,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run a search space to the end of its budget")
    p.add_argument("space", help="a search space YAML file (spaces/*.yaml)")
    p.add_argument("--name", help="experiment folder name (default: SPACE-NAME-YYYYmmdd-HHMMSS)")
    p.add_argument(
        "--results", default="results", help="where experiment folders go (default: results)"
    )
    p.add_argument(
        "--data", type=Path, help="a folder of DICOM files (default: the synthetic phantom)"
    )
    p.add_argument("--labels", type=Path, help="the labels CSV (default: DATA/labels.csv)")
    _add_budget_overrides(p)

    p = sub.add_parser("resume", help="continue a crashed or interrupted experiment")
    p.add_argument("experiment", help="results/NAME")
    p.add_argument(
        "--data",
        type=Path,
        help="where the DICOM folder is now (when results/.local, which keeps it, is not here)",
    )
    p.add_argument("--labels", type=Path, help="the labels CSV (default: DATA/labels.csv)")
    _add_budget_overrides(p)

    p = sub.add_parser("status", help="show an experiment's progress")
    p.add_argument("experiment")

    p = sub.add_parser("best", help="print the best configuration")
    p.add_argument("experiment")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")

    p = sub.add_parser("list", help="list the parts a space can name")
    p.add_argument("kind", choices=[k.kind for k in pipeline.PART_KINDS])
    p.add_argument(
        "--filter", default="", help="only names containing this text (backbones: a timm pattern)"
    )

    p = sub.add_parser("promote", help="train the best configuration longer and test it once")
    p.add_argument("experiment")
    p.add_argument(
        "--epochs", type=int, help="epochs of the final run (default: budget.final_epochs or 2x)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: results/NAME/final)")
    p.add_argument("--wandb", choices=("online", "offline", "disabled"))
    p.add_argument(
        "--run-final", metavar="MODULE:FUNCTION", help="another function with run_final's signature"
    )
    p.add_argument(
        "--external",
        type=Path,
        metavar="DIR",
        help="a second labeled data folder (another site): the kept model is scored on it once",
    )
    p.add_argument(
        "--labels", type=Path, help="the external folder's labels CSV (default: DIR/labels.csv)"
    )

    p = sub.add_parser("report", help="write an HTML report with plots")
    p.add_argument("experiment")
    p.add_argument("--out", type=Path, help="output file (default: results/NAME/report.html)")

    p = sub.add_parser("validate", help="check search space files")
    p.add_argument("spaces", nargs="+")
    return parser


# ------------------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from search.axclient import build_client
    from search.noise import planned_warning
    from search.space import load_space

    status = 0
    for path in args.spaces:
        try:
            space = load_space(path)
            build_client(space)  # Ax's own checks (hierarchy, constraints)
        except Exception as e:  # a SpaceError names the file; Ax's own rejections do not
            _err(str(e) if isinstance(e, SpaceError) else f"{path}: {e}")
            status = 2
            continue
        searched = ", ".join(p.name for p in space.parameters.searched)
        print(
            f"{path}: ok ({len(space.parameters.searched)} searched: {searched}; "
            f"{space.budget.trials} trials, {space.budget.concurrency} at a time)"
        )
        warning = planned_warning(space)
        if warning:
            print(f"warning: {warning}")
    return status


def _print_result(result: Any) -> int:
    from search.statefiles import display_path, resume_command

    shown = display_path(result.path)
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(result.counts.items()))
    for note in result.notes:
        print(note)
    print(f"{shown}: {result.status} in {result.seconds:.0f}s ({counts})")
    if result.best is not None:
        b = result.best
        sem = b["objective"].get("sem")
        noise = f" ± {sem:.3f} (standard error)" if sem is not None else ""
        print(
            f"best: trial {b['trial']}, {b['objective']['metric']} = "
            f"{b['objective']['value']:.4g}{noise}"
        )
        print(f"next: python -m search report {shown}   |   python -m search promote {shown}")
    if result.status != "finished":
        print(f"continue with: {resume_command(result.path)}")
        return 1
    return 0


def _trainable(args: argparse.Namespace) -> Callable | None:
    if getattr(args, "trainable", None):
        from search.worker import load_trainable

        return load_trainable(args.trainable)
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from search.experiment import ExperimentFolder
    from search.space import load_space

    if args.name:  # refuse a taken name before the heavy imports (Ray, Ax)
        ExperimentFolder(Path(args.results) / args.name).check_new()
    from search.runner import run_search

    check_names = args.trainable is None
    space = load_space(args.space, check_names=check_names)
    space = space.with_overrides(data_dir=args.data, labels=args.labels, **_overrides(args))
    trainable = _trainable(args)
    command = "run " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["run"] else f"run {args.space}"
    result = run_search(
        space,
        name=args.name,
        results_dir=args.results,
        trainable=trainable,
        address=args.address,
        progress=not args.no_progress,
        command=command,
        echo=print,
    )
    return _print_result(result)


def cmd_resume(args: argparse.Namespace) -> int:
    from search.experiment import ExperimentFolder
    from search.runner import resume_search

    if args.labels and not args.data:
        _err("--labels names the labels CSV of --data DIR: give --data too")
        return 2
    if args.data:  # recorded outside the experiment folder, then read by resume
        ExperimentFolder.open(args.experiment).supply_data(args.data, args.labels)
    result = resume_search(
        args.experiment,
        trainable=_trainable(args),
        address=args.address,
        progress=not args.no_progress,
        echo=print,
        **_overrides(args),
    )
    return _print_result(result)


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from search.progress import Progress
    from search.runner import open_experiment
    from search.statefiles import resume_command

    folder = open_experiment(args.experiment)
    space = folder.space()
    status = folder.status
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(Progress(folder, space, enabled=True, max_rows=1000, console=console).table())
    sessions = folder.state.get("sessions", [])
    print(
        f"{folder.display}: {status}; {len(sessions)} session(s); budget {space.budget.trials} trials"
    )
    if status in ("crashed", "interrupted", "failed"):
        print(f"continue with: {resume_command(folder.path)}")
    elif status == "running":
        print("a driver is running it now")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    import yaml

    from search.runner import open_experiment

    folder = open_experiment(args.experiment)
    best = folder.best()
    if best is None:
        _err(f"{folder.display}: no completed trial meets the objective's constraints yet")
        return 1
    if args.format == "json":
        print(json.dumps(best, indent=2, default=str))
    else:
        print(yaml.safe_dump(best, sort_keys=False), end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    parts = pipeline.list_parts(args.kind)
    if args.filter:
        if args.kind == "backbones" and any(c in args.filter for c in "*?["):
            import fnmatch

            parts = [(n, d) for n, d in parts if fnmatch.fnmatch(n, args.filter)]
        else:
            parts = [(n, d) for n, d in parts if args.filter in n]
    width = max((len(n) for n, _ in parts), default=0)
    for name, doc in parts:
        print(f"{name:<{width}}  {doc}".rstrip())
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from search.promote import headline, promote
    from search.worker import load_trainable

    if args.labels is not None and args.external is None:
        _err("--labels names the labels CSV of --external DIR: give --external too")
        return 2
    run_final = load_trainable(args.run_final) if args.run_final else None
    summary = promote(
        args.experiment,
        run_final=run_final,
        epochs=args.epochs,
        out_dir=args.out,
        wandb_mode=args.wandb,
        external=(args.external, args.labels) if args.external is not None else None,
        echo=print,
    )
    for line in headline(summary):
        print(line)
    out = args.out or Path(args.experiment) / "final"
    print(f"report: {out / 'report.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search.report import write_report

    path = write_report(args.experiment, args.out)
    print(path)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "resume": cmd_resume,
    "status": cmd_status,
    "best": cmd_best,
    "list": cmd_list,
    "promote": cmd_promote,
    "report": cmd_report,
    "validate": cmd_validate,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search.statefiles import ExperimentError

    try:
        return COMMANDS[args.command](args)
    except (SpaceError, ExperimentError) as e:
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        target = getattr(args, "experiment", None)
        _err(
            "interrupted"
            + (
                f": continue with `python -m search resume {target}`"
                if target
                else "; `python -m search status results/NAME` shows what finished"
            )
        )
        return 130
    except Exception as e:
        from search.errors import SearchError
        from search.promote import PromoteError

        if isinstance(e, SearchError | PromoteError):
            _err(str(e))
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
