"""`surgitwin` command line. Thin: every command calls an importable function.

Each area registers its subcommands from ``pipeline/commands/<area>.py`` (``register(sub)``).
Those modules import nothing heavy at module level, so ``surgitwin --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SurgitwinError

# Modules under pipeline.commands that define register(subparsers); missing ones are skipped
# so a partially installed checkout still starts.
COMMAND_MODULES = ("core", "segment", "planning", "viewer", "batch", "pacs", "train", "followup", "edit")
# "pipeline.commands" in the source tree, "surgitwin.pipeline.commands" in the installed wheel
COMMANDS = f"{__package__}.commands"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surgitwin", description="Patient-specific surgical planning twins from DICOM.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"{COMMANDS}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{COMMANDS}.{name}":
                continue
            raise
        mod.register(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib import metadata
        print(f"surgitwin {metadata.version('surgitwin')}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except SurgitwinError as e:
        rule = f" [rule: {e.rule}]" if e.rule and e.rule not in str(e) else ""
        print(f"surgitwin {args.command}: error: {e}{rule}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`surgitwin batch status --json | head`): stop quietly; point
        # stdout at /dev/null so the interpreter's final flush does not fail again
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a process killed by it
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
