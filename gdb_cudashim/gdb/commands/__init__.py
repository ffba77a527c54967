"""One module per gdb command; importing this package registers them all."""
from . import catch_init_error, cuda_doctor, cuda_report, cuda_run  # noqa: F401
