"""The ``hooks-mm`` command.

    hooks-mm inspect [MODEL]   hook points, layer count and the modality layout of an example
    hooks-mm demo [MODEL]      inspect, then cache image/text activations and ablate neurons
    hooks-mm sweep [MODEL]     neuron-ablation sweep over the layers: results table + report
    hooks-mm report RUN_DIR    one self-contained offline HTML page for a run directory

MODEL is a hub id, a local directory, or a built-in name: a trained organism (toy-llava,
toy-anygpt, toy-anygpt-monotune, their -large versions; default toy-llava) or tiny-<family>
(random weights).
On an organism the example batch is held-out questions of its shapes task.
`hooks-mm COMMAND --help` lists a command's options.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from hooks_mm.cli.options import (
    DEFAULT_MODEL,
    DTYPES,
    MAX_AUTO_THREADS,
    OptionError,
    layers_arg,
    neurons_arg,
    threads_arg,
)

SWEEP_EPILOG = """examples:
  hooks-mm sweep --out runs/demo                       every neuron of every layer at the image positions
  hooks-mm sweep tiny-llava --layers 0,2-3 --neurons 64 --positions "Last()" --metric kl_to_clean
  hooks-mm sweep --positions "Image(0) | After(Image())" --metric "logit_diff(correct=5, wrong=7)"
  hooks-mm sweep --out runs/demo --resume              continue an interrupted run from its checkpoint

--out: a directory that already holds a run (checkpoint.pt, results.csv, meta.json, report.html) is
refused unless --force (delete those files, start over) or --resume (keep the finished configs of its
checkpoint, run the rest; a checkpoint of another model, batch or metric is refused).
--threads auto: $OMP_NUM_THREADS when set, else the usable CPUs minus the load average (at least 1,
at most 4): on a busy machine torch's default of every core is many times slower than 1 thread."""

POSITIONS_HELP = (
    "where to ablate: a selector by its hooks_mm name, bare or called, combined with | & ~ "
    '(image, text, "Last()", "Image(0)", "First(4, of=Image())", "Image() | Last()", "[3, 5]"); default image'
)
METRIC_HELP = (
    "what each config is scored by, a metric of hooks_mm.sweep by name, with its arguments: answer_logprob "
    '(default: the right answer on an organism, else the clean top token), kl_to_clean, "logit_diff(correct=5, '
    'wrong=7)", "modality_nll(modality=\'text\')"; positions= takes a selector'
)


def _model_options(p: argparse.ArgumentParser) -> None:
    """MODEL and the options of every command that loads a model."""
    p.add_argument(
        "model", nargs="?", default=DEFAULT_MODEL, help=f"hub id, directory or built-in name (default {DEFAULT_MODEL})"
    )
    p.add_argument("--device", default=None, help="where the weights go: cpu, cuda, cuda:1, mps (default: as loaded)")
    p.add_argument(
        "--dtype", default=None, choices=DTYPES, help="weights dtype (default: the checkpoint's own, like auto)"
    )
    p.add_argument(
        "--threads",
        type=threads_arg,
        default=None,
        metavar="N",
        help=f"torch CPU threads, or auto (default: $OMP_NUM_THREADS, else free CPUs, 1-{MAX_AUTO_THREADS})",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show (--progress) or hide (--no-progress) progress bars (default: on a terminal only)",
    )


def _where_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layers",
        type=layers_arg,
        nargs="+",
        default=None,
        metavar="L",
        help="layers, as indices and inclusive ranges: 0,2,5-7 (default all)",
    )
    p.add_argument("--positions", default=None, metavar="SELECTOR", help=POSITIONS_HELP)


def build_parser() -> argparse.ArgumentParser:
    """The ``hooks-mm`` argument parser (standard library only)."""
    parser = argparse.ArgumentParser(
        prog="hooks-mm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="hook points, layers and modality layout")
    _model_options(p)
    p = sub.add_parser("demo", help="inspect, cache and ablate")
    _model_options(p)
    _where_options(p)
    p = sub.add_parser(
        "sweep",
        help="neuron-ablation sweep over the layers, results table and report",
        description="Zero-ablate MLP neurons one at a time (mlp.hook_post at --positions) and score each with\n"
        "--metric: RUN_DIR/results.csv, meta.json and an offline report.html.",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_options(p)
    _where_options(p)
    p.add_argument(
        "--neurons",
        type=neurons_arg,
        default=None,
        metavar="N|LIST",
        help="a count N (the first N neurons of each layer) or indices 3,7,10-12 (one neuron: 5-5); default all",
    )
    p.add_argument("--metric", default="answer_logprob", metavar="METRIC", help=METRIC_HELP)
    p.add_argument("--out", default="runs/sweep", help="run directory (results.csv, meta.json, report.html)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true", help="--out holds a run: delete its files and start over")
    again.add_argument(
        "--resume", action="store_true", help="--out holds a run: continue from its checkpoint (same model and batch)"
    )
    p.add_argument("--remote", metavar="URL", default=None, help="run on this NDIF host (API key: $NDIF_API_KEY)")
    p.add_argument("--max-configs-per-request", type=int, default=64)
    p.add_argument("--n-examples", type=int, default=16, help="held-out questions (built-in organisms)")
    p = sub.add_parser("report", help="one self-contained offline HTML page for a run directory")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output file (default RUN_DIR/report.html)")
    p.add_argument("--top", type=int, default=20, help="table rows shown")
    for p in sub.choices.values():
        p.set_defaults(parser=p)  # its own errors print its usage
    return parser


def report(args: argparse.Namespace) -> int:
    """``hooks-mm report RUN_DIR``: the page's path; a missing or empty run directory is one line."""
    if args.top < 1:
        raise OptionError(f"--top {args.top}: give a positive number of table rows.")
    from hooks_mm.vis.report import write_report

    try:
        print(write_report(args.run_dir, args.out, args.top))
    except (OSError, ValueError) as e:
        raise OptionError(str(e)) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hooks-mm`` with ``argv`` (default ``sys.argv[1:]``); a bad option value exits with
    status 2 and one line naming the fix, as argparse does."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    try:
        if args.command == "sweep":
            if args.max_configs_per_request < 1 or args.n_examples < 1:
                bad = "--max-configs-per-request" if args.max_configs_per_request < 1 else "--n-examples"
                raise OptionError(f"{bad}: give a positive number.")
        if args.command == "report":
            return report(args)
        from hooks_mm.cli.commands import run

        return run(args)
    except OptionError as e:
        args.parser.error(str(e))
    return 2
