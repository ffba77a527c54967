/*
 * libversioned.so: symbol-version cases for the dlsym model (tests/test_core.py),
 * built with versioned.map. dlsym() with no version must find the default version
 * (only_new, both), an unversioned definition, and nothing for a symbol that exists
 * only as a hidden (non-default) version (only_old).
 */
int both_v1(void) { return 1; }
int both_v2(void) { return 2; }
int only_old_v1(void) { return 1; }
int only_new_v2(void) { return 2; }
int plain_global(void) { return 3; }
__asm__(".symver both_v1, both@V1");
__asm__(".symver both_v2, both@@V2");
__asm__(".symver only_old_v1, only_old@V1");
__asm__(".symver only_new_v2, only_new@@V2");
