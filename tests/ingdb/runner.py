"""Runs inside gdb: executes one test function from a tests/ingdb module and quits with
0 (passed) or 1 (failed, traceback printed). Invoked by tests/test_in_gdb.py."""
import importlib
import os
import sys
import traceback

import gdb


def main():
    module_name, func_name = os.environ["INGDB_TEST"].split("::")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        module = importlib.import_module(f"ingdb.{module_name}")
        getattr(module, func_name)()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        gdb.execute("quit 1")
    print("INGDB PASSED")
    sys.stdout.flush()
    gdb.execute("quit 0")


main()
