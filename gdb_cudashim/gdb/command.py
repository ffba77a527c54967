"""One base class for every gdb command: argparse-parsed, help generated from the parser,
errors as one line (gdb.GdbError), never a traceback."""
from __future__ import annotations

import argparse
import os
import shlex

import gdb

from ..core.term import help_width

REGISTRY: dict[str, type] = {}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)

    def exit(self, status=0, message=None):
        if message:
            raise UsageError(message.strip())
        raise _HelpShown()


class _HelpShown(Exception):
    pass


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, width=help_width())


class Command(gdb.Command):
    """Subclasses set name, summary, and build(parser); invoke gets the parsed namespace."""

    name = ""
    summary = ""
    command_class = gdb.COMMAND_USER

    @classmethod
    def make_parser(cls) -> argparse.ArgumentParser:
        parser = _Parser(prog=cls.name, description=cls.summary, add_help=True, formatter_class=_formatter)
        cls.build(parser)
        return parser

    @classmethod
    def build(cls, parser):
        pass

    @classmethod
    def help_text(cls, parser=None) -> str:
        parser = parser or cls.make_parser()
        usage = parser.format_usage().strip()
        if usage.lower().startswith("usage: "):
            usage = usage[7:]
        body = parser.format_help()
        # drop argparse's own "usage:" and description lines, keep the option list
        rest = body.split("\n\n", 2)[-1] if "\n\n" in body else ""
        return f"{cls.summary}\nUsage: {usage}\n\n{rest}".rstrip()

    def __init__(self, full_help: bool = True):
        """gdb takes a command's help from __doc__ when it is registered. A batch run (gdb-cudashim
        run) never shows help, so it registers with the summary alone (FULL_HELP false) and the
        parser is built at the first use: formatting help imports shutil and friends (~5 ms)."""
        self._parser = None
        if full_help:
            self._parser = self.make_parser()
            type(self).__doc__ = self.help_text(self._parser)
        else:
            type(self).__doc__ = f"{self.summary}\nUsage: {self.name} --help"
        super().__init__(self.name, self.command_class)

    @property
    def parser(self) -> argparse.ArgumentParser:
        if self._parser is None:
            self._parser = self.make_parser()
        return self._parser

    def invoke(self, argument, from_tty):
        try:
            args = self.parser.parse_args(shlex.split(argument or ""))
        except _HelpShown:
            gdb.write(self.parser.format_help())
            return
        except UsageError as exc:
            raise gdb.GdbError(f"{self.name}: {exc} (see 'help {self.name}')") from None
        except ValueError as exc:  # shlex: unbalanced quotes
            raise gdb.GdbError(f"{self.name}: {exc}") from None
        try:
            self.run(args, from_tty)
        except gdb.GdbError:
            raise
        except (gdb.error, OSError, ValueError, LookupError, RuntimeError) as exc:
            if os.environ.get("GDB_CUDASHIM_DEBUG"):
                raise
            raise gdb.GdbError(f"{self.name}: {exc}") from None

    def run(self, args, from_tty):
        raise NotImplementedError


MAX_SECONDS = 1e9


def check_seconds(command: str, option: str, value: float | None) -> None:
    """A --timeout / --settle: a positive, finite number of seconds. argparse's float takes
    nan and 1e400 (inf), with which a deadline never comes."""
    if value is not None and not (0 < value < MAX_SECONDS):  # nan fails every comparison
        raise gdb.GdbError(f"{command}: {option} {value:g}: give a positive, finite number of seconds "
                           "(below 1e9)")


def check_json(command: str, path: str | None) -> None:
    """--json FILE, checked before anything runs, as the CLI does (core/files.check_writable):
    not a directory, a FIFO with a reader, and never the user's own file (only an empty file
    or an earlier report is replaced)."""
    if path is None:
        return
    from ..core.files import check_writable

    problem = check_writable(path)
    if problem:
        raise gdb.GdbError(f"{command}: {problem}")


def register(cls):
    REGISTRY[cls.name] = cls
    return cls
