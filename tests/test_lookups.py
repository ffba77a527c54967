"""core/lookups.py, the dlsym model, without gdb: which lookups are watched, the answers it
gives from a real library's symbol tables, and what one disagreement does."""
import glob

from gdb_cudashim.core.lookups import WATCH_FIRST, LookupModel
from gdb_cudashim.core.timeline import Lookup

LIBM = sorted(glob.glob("/lib/x86_64-linux-gnu/libm.so.6") + glob.glob("/usr/lib/x86_64-linux-gnu/libm.so.6"))[0]
# what a process using libm has loaded: the handle's search list is built from these
LOADED = [LIBM, LIBM.replace("libm.so.6", "libc.so.6"), "/lib64/ld-linux-x86-64.so.2"]


def lookup(symbol, n=0, how="dlsym", lib=LIBM):
    return Lookup(seq=n, pid=1, tid=1, how=how, symbol=symbol, handle_library=lib, version=None, found=None)


def model():
    notes = []
    return LookupModel(notes.append), notes


def test_first_lookups_are_watched_then_answered_from_the_tables():
    m, notes = model()
    watched = []
    for i in range(WATCH_FIRST):
        l = lookup("cos", i)
        assert m.answer(l, True, lambda: LOADED) == (True, True)
        l.found = True  # what the return said
        m.check(l)
        watched.append(l)
    found, missing = lookup("sin", 10), lookup("cuNoSuchThing", 11)
    assert m.answer(found, True, lambda: LOADED) == (False, False)
    assert found.found is True and found.found_by == "symbol table" and found.provider
    assert m.answer(missing, True, lambda: LOADED) == (False, False)
    assert missing.found is False
    assert notes == []


def test_key_lookups_dlvsym_and_interposed_dlsym_are_always_watched():
    m, _ = model()
    for i in range(WATCH_FIRST):
        m.answer(lookup("cos", i), True, lambda: LOADED)
    assert m.answer(lookup("cuGetProcAddress_v2"), True, lambda: LOADED) == (True, True)
    assert m.answer(lookup("cos", how="dlvsym"), True, lambda: LOADED) == (True, False)
    assert m.answer(lookup("cos"), False, lambda: LOADED) == (True, False)  # not libc's own dlsym


def test_one_disagreement_watches_every_later_lookup_in_that_library():
    m, notes = model()
    first = lookup("cuNoSuchThing", 0)
    m.answer(first, True, lambda: LOADED)
    first.found = True  # an interposer answered what the tables do not have
    m.scope((1, LIBM), lambda: LOADED)
    m.check(first)
    assert notes and "every later lookup in it is watched" in notes[0]
    for i in range(1, 10):
        assert m.answer(lookup("sin", i), True, lambda: LOADED) == (True, True)


def test_every_return_watches_all():
    m, _ = model()
    m.every_return = True
    for i in range(10):
        assert m.answer(lookup("sin", i), True, lambda: LOADED) == (True, True)


def test_a_library_it_cannot_read_is_watched_with_a_note(tmp_path):
    bad = tmp_path / "libbad.so"
    bad.write_bytes(b"not an elf")
    m, notes = model()
    for i in range(WATCH_FIRST + 2):
        assert m.answer(lookup("x", i, lib=str(bad)), True, lambda: [str(bad)]) == (True, True)
    assert notes and "watched at every return" in notes[0]
