"""One module per gdb command; importing this package registers them all."""
from . import catch_init_error, cuda_doctor, cuda_patch, cuda_report, cuda_run, cuda_state  # noqa: F401
