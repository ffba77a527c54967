/* Stand-in for CUDA's crt/host_defines.h, which the runtime wheel lacks: enough for driver_types.h in C. */
#define __device_builtin__
#define __align__(n) __attribute__((aligned(n)))
#define __builtin_align__(n) __align__(n)
