"""The ``audiotag`` command: thin subcommands over the Python API.

Every subcommand parses its arguments, calls one library function and prints what it found.
Errors the user can act on are printed as ``audiotag: error: ...`` with a hint and a non-zero exit
status; anything unexpected is summarised in one line with the traceback saved to a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback

from .. import malloc, mkl
from ..errors import AudiotagError
from ..version import __version__
from . import combine_commands, data_commands, run_commands
from .options import resolve_data_positional, shared_options

EXIT_PROBLEMS = data_commands.EXIT_PROBLEMS
EXIT_INTERNAL = 3

# In the order `audiotag --help` lists them: from data to results.
SUBCOMMANDS = (
    data_commands.add_demo, data_commands.add_check, data_commands.add_inspect, data_commands.add_features,
    run_commands.add_train, run_commands.add_merge, run_commands.add_predict, run_commands.add_score,
    run_commands.add_runs, combine_commands.add_ensemble, combine_commands.add_pipeline,
    combine_commands.add_report, combine_commands.add_ablate, run_commands.add_audit, run_commands.add_tag,
    run_commands.add_export,
    data_commands.add_config, data_commands.add_bench,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag",
        description="Multi-label audio tagging, FAT2019 style: validate data, cache features, train, predict, score.",
        epilog="example:\n  audiotag demo            # generate a synthetic dataset and run the whole pipeline on it\n"
               "  audiotag check --data DATA --skip-bad\n\nEach subcommand has its own --help with an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"audiotag {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs.required = True
    shared = shared_options()
    for add in SUBCOMMANDS:
        add(subs, shared)
    return parser


def main(argv: list[str] | None = None) -> int:
    malloc.keep_freed_memory()  # before the large allocations of training (see malloc.py)
    mkl.unlock()  # the CLI's choice, made before MKL's first call (see mkl.py); AUDIOTAG_MKL_AMD=off keeps MKL's own
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolve_data_positional(args)
        return args.func(args)
    except AudiotagError as e:
        print(f"audiotag: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("audiotag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, traceback to a file
        fd, path = tempfile.mkstemp(prefix="audiotag-crash-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            traceback.print_exc(file=f)
        print(f"audiotag: internal error: {type(e).__name__}: {e}\n  the full traceback is in {path}; "
              "please report it with the command you ran", file=sys.stderr)
        return EXIT_INTERNAL
