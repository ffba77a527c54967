"""One module per gdb command. The loader imports them (cuda_doctor first, and alone when a
dependency is missing), so importing this package itself imports nothing."""

MODULES = ("catch_init_error", "cuda_run", "cuda_report", "cuda_state", "cuda_patch", "cuda_audit", "cuda_whatif")
