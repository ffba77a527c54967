"""Breakpoints placed by address as each file loads, kept to the program spaces where they are true.

Why not by name: gdb re-resolves a by-name breakpoint in every objfile, debug info
included, whenever a library loads; for catch-init-error's ~35 names that cost more
than all of cudart's dlsym stops (see core/symaddr.py). Here each newly loaded file's
symbol tables are read once, and a breakpoint goes to load bias + st_value.

The catch: gdb gives an address breakpoint a location in *every* program space. A
forked child shares the parent's layout, so there the location is right; after an
exec, or in another program, the same address is some other code or unmapped ("Cannot
insert breakpoint"). So every location is kept enabled only in the program spaces
where one of their loaded files defines that function at that address, re-checked
whenever gdb changes a breakpoint's locations, a file loads or goes, or a program
space is emptied (exec, re-run).
"""
from __future__ import annotations

import os

import gdb

from ..core import symaddr
from .events import Subscriptions


class Placer:
    """For NAMES, calls MAKE(name, address) -> [breakpoint at '*address', ...] once per address
    any loaded file defines the function at, and keeps those breakpoints' locations true."""

    def __init__(self, names, make, note, wanted=None):
        self.names = tuple(sorted(set(names)))
        self.make = make
        self.note = note
        self.wanted = wanted  # wanted(progspace, bp): False keeps BP's location there disabled
        self.bps: dict[tuple[str, int], list[gdb.Breakpoint]] = {}
        self.valid: dict[gdb.Progspace, set[tuple[str, int]]] = {}  # where each (name, address) is true
        self.placed: dict[gdb.Progspace, dict[str, list[tuple[str, int]]]] = {}  # file -> what it defines
        self._cache: dict[tuple[str, int, int], symaddr.FileFunctions] = {}
        self._ours: set[int] = set()
        self._retired: dict[int, set] = {}  # breakpoint number -> program spaces it no longer stops in
        self._full: set[tuple[str, int]] = set()  # where every kind of breakpoint has been made
        self._busy = False
        self._events = Subscriptions()

    # ------------------------------------------------------------------ life --
    def start(self):
        self._events.connect((gdb.events.new_objfile, self._on_new_objfile),
                             (gdb.events.free_objfile, self._on_free_objfile),
                             (gdb.events.clear_objfiles, self._on_clear_objfiles),
                             (gdb.events.breakpoint_modified, self._on_modified))
        for inferior in gdb.inferiors():
            if inferior.pid:
                self.place(inferior.progspace)

    def stop(self):
        self._events.disconnect_all()

    # ------------------------------------------------------------- placing --
    def place(self, progspace):
        """Read every file of PROGSPACE not read yet; place and enable what they define."""
        pid = next((i.pid for i in gdb.inferiors() if i.pid and i.progspace == progspace), 0)
        if not pid:
            return  # no process yet: addresses are not known before the program is mapped
        placed = self.placed.setdefault(progspace, {})
        valid = self.valid.setdefault(progspace, set())
        main = progspace.filename
        maps = None
        changed = False
        cwd = None
        copies: dict[str, int] = {}
        for objfile in progspace.objfiles():
            path = known_as = objfile.filename
            if objfile.owner is not None or not path or path.startswith(("system-supplied DSO", "<")):
                continue  # separate debug info, the vDSO, gdb's own objfiles ("<<anonymous objfile>>" in cuda-gdb)
            # the same file loaded in two link-map namespaces (the C library of an audit library's
            # namespace, then the program's) is two objfiles: the second is read when it comes
            copies[path] = copies.get(path, 0) + 1
            if copies[path] > 1:
                known_as = f"{path}#{copies[path]}"
            if known_as in placed:
                continue
            placed[known_as] = []
            try:
                if not os.path.isabs(path):  # dlopen("dir/lib.so"): ld.so took it from the process's cwd
                    cwd = cwd or os.readlink(f"/proc/{pid}/cwd")
                    path = os.path.join(cwd, path)
                st = os.stat(path)
                key = (path, st.st_ino, st.st_mtime_ns)
                functions = self._cache.get(key)
                if functions is None:
                    functions = self._cache[key] = symaddr.read_functions(path, self.names, symtab=path == main)
                if not functions.offsets:
                    continue
                if maps is None:
                    with open(f"/proc/{pid}/maps") as f:
                        maps = f.read()
            except (OSError, symaddr.SymaddrError) as exc:
                self.note(f"{os.path.basename(path)}: its symbols cannot be read ({exc}); its CUDA entry points "
                          f"are not traced (catch-init-error --by-name places breakpoints by name instead)")
                continue
            biases = symaddr.load_biases(maps, st.st_ino, st.st_dev, functions)
            if not biases:
                self.note(f"{os.path.basename(path)}: not found in /proc/{pid}/maps; its CUDA entry points are not "
                          f"traced (catch-init-error --by-name places breakpoints by name instead)")
                continue
            changed |= self._place_file(progspace, known_as, functions, biases, placed, valid)
        changed |= self._place_deleted(progspace, pid, placed, valid, maps)
        if changed:
            self.reconcile()

    def _place_file(self, progspace, known_as, functions, biases, placed, valid) -> bool:
        changed = False
        for function, offsets in functions.offsets.items():
            for offset in (o + bias for o in offsets for bias in biases):
                where = (function, offset)
                placed[known_as].append(where)
                valid.add(where)
                # a process that records its own calls needs no call breakpoint in its libraries
                # (tracer._wanted); each costs ~2 ms to make and gdb re-resolves it at every load
                full = self.wanted is None or self.wanted(progspace, where)
                if where not in self.bps or (full and where not in self._full):
                    made = self.make(*where, full=full, more=where in self.bps)
                    self.bps.setdefault(where, []).extend(made)
                    if full:
                        self._full.add(where)
                    for bp in made:
                        bp.placed_at = where
                        self._ours.add(bp.number)
                changed = True
        return changed

    def _place_deleted(self, progspace, pid, placed, valid, maps: str | None = None) -> bool:
        """A library deleted after it was loaded (a package upgrade under a running server) has no
        file for gdb to read, so no objfile: its code is read from the process's own mapping
        (/proc/PID/map_files), and its entry points are traced all the same."""
        if maps is None:  # place() read them for this same objfile event: read once a new file
            try:
                with open(f"/proc/{pid}/maps") as f:
                    maps = f.read()
            except OSError:
                return False
        if " (deleted)" not in maps:
            return False
        changed = False
        for line in maps.splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].endswith(" (deleted)") or int(parts[2], 16) != 0:
                continue
            path = parts[5][: -len(" (deleted)")]
            known_as = path + " (deleted)"
            if known_as in placed or not path.startswith("/") or "/memfd:" in path:
                continue
            placed[known_as] = []
            readable = f"/proc/{pid}/map_files/{parts[0]}"
            try:
                functions = symaddr.read_functions(readable, self.names)
                dmaj, dmin = (int(x, 16) for x in parts[3].split(":"))
                biases = symaddr.load_biases(maps, int(parts[4]), os.makedev(dmaj, dmin), functions)
            except (OSError, ValueError, symaddr.SymaddrError):
                continue
            if functions.offsets and biases:
                self.note(f"{os.path.basename(path)} was deleted after it was loaded (a package upgrade?): its code "
                          f"was read from the process's own mapping (/proc/{pid}/map_files)")
                changed |= self._place_file(progspace, known_as, functions, biases, placed, valid)
        return changed

    def _on_new_objfile(self, event):
        try:
            self.place(event.new_objfile.progspace)
        except gdb.error as exc:
            self.note(f"placing breakpoints: {exc}")

    def _on_free_objfile(self, event):
        objfile = event.objfile
        try:
            progspace, path = objfile.progspace, objfile.filename
        except RuntimeError:
            return
        placed = self.placed.get(progspace, {})
        gone = [w for key in [k for k in placed if k == path or k.startswith(path + "#")] for w in placed.pop(key)]
        if gone:
            self.valid.get(progspace, set()).difference_update(gone)
            self.reconcile()

    def _on_clear_objfiles(self, event):
        progspace = event.progspace
        self.placed.pop(progspace, None)
        if self.valid.pop(progspace, None):
            self.reconcile()

    def _on_modified(self, bp):
        if self._busy:
            return
        if bp.number in self._ours:
            self._reconcile_one(bp, self._spaces())
        elif hasattr(bp, "pin_locations"):  # a traced call's return (handlers.Return)
            self._busy = True
            try:
                bp.pin_locations()
            finally:
                self._busy = False

    def retire(self, progspace, bp) -> None:
        """Stop breaking at BP in PROGSPACE only: a window already open there, a function one
        process calls over and over after its init. Other processes, and other breakpoints at
        the same address, keep their locations."""
        self._retired.setdefault(bp.number, set()).add(progspace)
        self._reconcile_one(bp, self._spaces())

    # ---------------------------------------------------------- locations --
    @staticmethod
    def _spaces():
        return {i.num: i.progspace for i in gdb.inferiors()}

    def reconcile(self):
        spaces = self._spaces()
        for made in list(self.bps.values()):
            for bp in made:
                self._reconcile_one(bp, spaces)

    def _reconcile_one(self, bp, spaces):
        """Enable BP's location in a program space only where that space's files put its function there."""
        if not bp.is_valid():
            return
        where = getattr(bp, "placed_at", None)
        self._busy = True
        try:
            retired = self._retired.get(bp.number, ())
            wanted = self.wanted or (lambda _space, _what: True)
            for loc in bp.locations:
                want = any(where in self.valid.get(spaces.get(num), ()) and spaces.get(num) not in retired
                           and wanted(spaces.get(num), bp) for num in loc.thread_groups)
                if loc.enabled != want:
                    loc.enabled = want
        except (gdb.error, RuntimeError):
            pass
        finally:
            self._busy = False
