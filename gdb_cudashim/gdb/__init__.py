"""The thin gdb layer: imports gdb; everything it decides is delegated to gdb_cudashim.core."""
