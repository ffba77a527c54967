"""The dlsym model: which lookups to watch to their return, and the answer ld.so would give
for the others, from the handle's symbol tables (core.dynsym). Pure: never imports gdb.

cudart's fallback when a shim lacks cuGetProcAddress_v2 makes ~420 dlsym()s; each is one
stop at its entry and found/NULL comes from here. Watched to the return (and compared with
this model): lookups the rules read, the first WATCH_FIRST per library, every one once the
model has disagreed with a watched return in that library, and all with every_return. A
lookup in a dlsym that is not the C library's own (an interposer) is watched and never
held against the model.
"""
from __future__ import annotations

import os

from . import dynsym
from .calls import KEY_LOOKUPS

WATCH_FIRST = 4  # lookups per library watched to their return, to check the symbol-table answers

Key = tuple  # (pid, handle library)


class LookupModel:
    def __init__(self, note, every_return: bool = False):
        self.note = note  # note(text): a line for the report
        self.every_return = every_return
        self.scopes: dict[Key, list | None] = {}  # -> the handle's search list (None: cannot answer)
        self.checks: dict[Key, list] = {}  # -> lookups watched to their return, to compare
        self.unanswerable: set[Key] = set()  # the model disagreed once: watch them all

    def answer(self, lookup, in_libc: bool, loaded) -> tuple[bool, bool]:
        """(watch LOOKUP's return?, compare that return with the tables?). When not watched,
        found/provider/found_by are set here. IN_LIBC: the lookup stopped in the C library's
        own dlsym. LOADED(): the absolute paths of the process's loaded files (called only
        the first time a library is asked)."""
        if lookup.how != "dlsym" or not in_libc:
            return True, False
        key = (lookup.pid, lookup.handle_library or "")
        checks = self.checks.setdefault(key, [])
        if (self.every_return or lookup.symbol in KEY_LOOKUPS or len(checks) < WATCH_FIRST
                or self.scope(key, loaded) is None  # the first time, this checks the returns watched so far
                or key in self.unanswerable):
            checks.append(lookup)
            return True, True
        provider = dynsym.lookup(self.scopes[key], lookup.symbol)
        lookup.found = provider is not None
        lookup.provider = provider
        lookup.found_by = "symbol table"
        return False, False

    def scope(self, key: Key, loaded):
        """The handle's search list, built once per (pid, library); building it checks the
        model against every return watched so far in that library."""
        if key in self.scopes:
            return self.scopes[key]
        scope = None
        path = key[1]
        if path.startswith("/") and os.path.isfile(path):
            try:
                scope = dynsym.search_list(path, loaded())
            except (dynsym.DynsymError, OSError, RuntimeError) as exc:
                self.note(f"lookups in {os.path.basename(path)} are watched at every return: {exc}")
        self.scopes[key] = scope
        if scope is not None:
            for earlier in self.checks.get(key, []):
                self.check(earlier)
        return scope

    def check(self, lookup) -> None:
        """A watched return vs the tables' answer: on disagreement, watch that library's every lookup."""
        key = (lookup.pid, lookup.handle_library or "")
        scope = self.scopes.get(key)
        if scope is None or lookup.found is None or key in self.unanswerable:
            return
        said = dynsym.lookup(scope, lookup.symbol) is not None
        if said == lookup.found:
            return
        self.unanswerable.add(key)
        self.note(f"dlsym({os.path.basename(key[1])}, {lookup.symbol!r}) returned "
                  f"{'an address' if lookup.found else 'NULL'} where its symbol tables said "
                  f"{'found' if said else 'NULL'}; every later lookup in it is watched at its return")
