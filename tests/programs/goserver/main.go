// goserver: an ollama-shaped server, for the tests.
//
//	goserver serve [--exit-after-discovery] [--flow per-libdir|two-pass]
//	               [--discovery-timeout D] [--pass-timeout D] [--probe-timeout D]
//	goserver runner
//	goserver probe
//
// Two discovery flows, chosen by --flow or GOSERVER_FLOW:
//
// per-libdir (the default) copies ollama 0.12.4 to 0.24: `serve` re-executes itself as
// `goserver runner` (os/exec), one runner as ollama runs one per lib/ollama/cuda_vXX dir,
// with the runner's stderr discarded as ollama does (GOSERVER_DEBUG=2 passes it through,
// like OLLAMA_DEBUG=2), reads the devices the runner found from its stdout, and kills the
// runner with SIGKILL when it has not finished after the discovery timeout (default 5s, or
// GOSERVER_DISCOVERY_TIMEOUT; ollama waits 30s). It then logs one line,
//
//	msg="inference compute" id=cpu library=cpu ... total_vram="0 B"
//
// when no CUDA device was found.
//
// two-pass copies ollama 0.30+ (discover/runner.go): pass 1 runs `goserver runner` (where
// ollama runs `llama-server --list-devices`; GOSERVER_PASS_TIMEOUT, default 30s) and
// `goserver probe` (where ollama runs `ollama gpu-discover`; GOSERVER_PROBE_TIMEOUT,
// default 15s); it drops, with ollama's log lines, a device with zero memory ("skipping
// pseudo-device with zero memory"), every device when the NVML driver's major version is
// under 550 ("NVIDIA driver too old"), and a compute capability missing from the runner's
// CUDA ARCHS ("compute capability not in compiled architectures"; GOSERVER_ARCHS=750,890
// overrides the list). Pass 2 (ollama 0.13.2+) re-runs the runner once per device left,
// with CUDA_VISIBLE_DEVICES=<ordinal> (GOSERVER_VISIBLE=ordinal, 0.30+, the default) or
// <"GPU-..." UUID> (GOSERVER_VISIBLE=uuid, 0.13 to 0.24) and GGML_CUDA_INIT=1, and drops a
// device that does not come back ("filtering device which didn't fully initialize"). Each
// device left gets `msg="inference compute" id=... library=CUDA compute=X.Y driver=X.Y ...`.
// Children past their timeout are killed with SIGKILL, as in per-libdir.
//
// After discovery `serve` keeps running, listening on 127.0.0.1 (an ephemeral port) until
// SIGINT or SIGTERM, unless --exit-after-discovery.
//
// `runner` dlopens the libggml-cuda named by GGML_CUDA_LIB (like tests/programs/probe.c)
// through cgo, calls ggml_backend_cuda_reg(), which runs ggml_cuda_init (ggml logs its
// error text to stderr), and prints one `device ...` line per device on stdout: ordinal,
// description, total and free bytes (ggml_backend_dev_memory), and ggml's name and
// device_id (ggml_backend_dev_get_props: the PCI bus id; upstream ggml has no UUID, that
// field is ollama's fork's), then `archs value="..."` (the backend's ARCHS feature, what
// llama-server prints as "CUDA : ARCHS = ...") and `devices=N`. With GGML_CUDA_INIT=1 (pass
// 2) it also creates a backend on each device (ggml_backend_dev_init), standing in for the
// full init ollama's patched ggml does then, and lists only the devices that initialize.
//
// `probe` calls, through dlopen, what `ollama gpu-discover` calls: cuInit(0),
// cuDriverGetVersion, cuDeviceGetCount, then per device cuDeviceGet,
// cuDeviceGetAttribute(75, 76), cuDeviceGetName, cuDeviceTotalMem_v2, cuDeviceGetPCIBusId,
// cuDeviceGetUuid_v2 (else cuDeviceGetUuid); then nvmlInit_v2 and
// nvmlSystemGetDriverVersion. It prints one `device ...` line per device and one `driver
// ...` line; each failing call is named on stderr with its result code.
// Go writes its own logs with raw write syscalls, not libc's write().
package main

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void *(*reg_fn)(void);
typedef size_t (*count_fn)(void *);
typedef void *(*dev_get_fn)(void *, size_t);
typedef const char *(*str_fn)(void *);
typedef void (*mem_fn)(void *, size_t *, size_t *);

static char goserver_err[1024];

// 0 and the device count in *n, or -1 with goserver_err set.
static int goserver_discover(const char *lib, size_t *n, void **reg_out, void **handle_out) {
	void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		snprintf(goserver_err, sizeof goserver_err, "failed to load %s: %s", lib, dlerror());
		return -1;
	}
	reg_fn reg = (reg_fn)dlsym(h, "ggml_backend_cuda_reg");
	count_fn count = (count_fn)dlsym(h, "ggml_backend_reg_dev_count");
	if (!reg || !count) {
		snprintf(goserver_err, sizeof goserver_err, "%s has no ggml_backend_cuda_reg/ggml_backend_reg_dev_count", lib);
		return -1;
	}
	void *r = reg();
	*n = r ? count(r) : 0;
	*reg_out = r;
	*handle_out = h;
	return 0;
}

// The head of ggml's struct ggml_backend_dev_props (ggml-backend.h, ggml 0.26: name,
// description, memory_free, memory_total, type, device_id, caps), with room to spare for
// the caps and whatever a later ggml appends: only the head is read.
struct goserver_props {
	const char *name;
	const char *description;
	size_t memory_free;
	size_t memory_total;
	int type;
	const char *device_id;
	char rest[256];
};
typedef void (*props_fn)(void *, struct goserver_props *);

static const char *goserver_dev_desc(void *h, void *reg, size_t i, size_t *free_b, size_t *total_b,
                                     const char **name, const char **device_id) {
	dev_get_fn get = (dev_get_fn)dlsym(h, "ggml_backend_reg_dev_get");
	str_fn desc = (str_fn)dlsym(h, "ggml_backend_dev_description");
	mem_fn mem = (mem_fn)dlsym(h, "ggml_backend_dev_memory");
	props_fn props = (props_fn)dlsym(h, "ggml_backend_dev_get_props");
	*free_b = *total_b = 0;
	*name = *device_id = NULL;
	if (!get || !desc || !mem)
		return "?";
	void *dev = get(reg, i);
	mem(dev, free_b, total_b);
	if (props) {
		struct goserver_props p;
		memset(&p, 0, sizeof p);
		props(dev, &p);
		*name = p.name;
		*device_id = p.device_id;
	}
	return desc(dev);
}

// The backend's "ARCHS" feature (ggml_backend_get_features through the registry's
// get_proc_address), what llama-server prints as "CUDA : ARCHS = 750 | 890"; NULL if none.
struct goserver_feature { const char *name; const char *value; };
typedef void *(*proc_fn)(void *, const char *);
typedef struct goserver_feature *(*features_fn)(void *);

static const char *goserver_archs(void *h, void *reg) {
	proc_fn proc = (proc_fn)dlsym(h, "ggml_backend_reg_get_proc_address");
	if (!proc || !reg)
		return NULL;
	features_fn features = (features_fn)proc(reg, "ggml_backend_get_features");
	if (!features)
		return NULL;
	for (struct goserver_feature *f = features(reg); f && f->name; f++)
		if (strcmp(f->name, "ARCHS") == 0)
			return f->value;
	return NULL;
}

// GGML_CUDA_INIT=1: a backend created on the device and freed again; 1 if it could be.
typedef void *(*dev_init_fn)(void *, const char *);
typedef void (*backend_free_fn)(void *);

static int goserver_dev_init(void *h, void *reg, size_t i) {
	dev_get_fn get = (dev_get_fn)dlsym(h, "ggml_backend_reg_dev_get");
	dev_init_fn init = (dev_init_fn)dlsym(h, "ggml_backend_dev_init");
	backend_free_fn bfree = (backend_free_fn)dlsym(h, "ggml_backend_free");
	if (!get || !init || !bfree)
		return 0;
	void *b = init(get(reg, i), NULL);
	if (!b)
		return 0;
	bfree(b);
	return 1;
}

static const char *goserver_error(void) { return goserver_err; }

// -- probe: what `ollama gpu-discover` calls, in its order -------------------------------

typedef int CUresult;
typedef int CUdevice;
typedef struct { unsigned char bytes[16]; } CUuuid;

static void *probe_sym(void *lib, const char *libname, const char *name) {
	void *p = lib ? dlsym(lib, name) : NULL;
	if (lib && !p)
		fprintf(stderr, "goserver probe: %s: not found in %s\n", name, libname);
	return p;
}

// A failed call, named with its result code (-1: the library does not have it).
static int probe_failed(const char *name, int r) {
	if (r != 0)
		fprintf(stderr, "goserver probe: %s failed: result=%d\n", name, r);
	return r != 0;
}

// Printable inside double quotes, for Go's strconv.Unquote on the other side.
static void probe_clean(char *s) {
	for (; *s; s++)
		if (*s < 0x20 || *s == '"' || *s == '\\' || (unsigned char)*s >= 0x7f)
			*s = '?';
}

#define PROBE_CALL(fn, ...) ((fn) ? (fn)(__VA_ARGS__) : -1)

static int goserver_probe(void) {
	void *cu = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!cu)
		fprintf(stderr, "goserver probe: dlopen libcuda.so.1: %s\n", dlerror());
	CUresult (*cuInit)(unsigned) = probe_sym(cu, "libcuda.so.1", "cuInit");
	CUresult (*cuDriverGetVersion)(int *) = probe_sym(cu, "libcuda.so.1", "cuDriverGetVersion");
	CUresult (*cuDeviceGetCount)(int *) = probe_sym(cu, "libcuda.so.1", "cuDeviceGetCount");
	CUresult (*cuDeviceGet)(CUdevice *, int) = probe_sym(cu, "libcuda.so.1", "cuDeviceGet");
	CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice) = probe_sym(cu, "libcuda.so.1", "cuDeviceGetAttribute");
	CUresult (*cuDeviceGetName)(char *, int, CUdevice) = probe_sym(cu, "libcuda.so.1", "cuDeviceGetName");
	CUresult (*cuDeviceTotalMem_v2)(size_t *, CUdevice) = probe_sym(cu, "libcuda.so.1", "cuDeviceTotalMem_v2");
	CUresult (*cuDeviceGetPCIBusId)(char *, int, CUdevice) = probe_sym(cu, "libcuda.so.1", "cuDeviceGetPCIBusId");
	CUresult (*cuDeviceGetUuid_v2)(CUuuid *, CUdevice) = probe_sym(cu, "libcuda.so.1", "cuDeviceGetUuid_v2");
	CUresult (*cuDeviceGetUuid)(CUuuid *, CUdevice) = probe_sym(cu, "libcuda.so.1", "cuDeviceGetUuid");

	int cuda_version = 0, count = 0;
	// cuInit failing means no CUDA devices; the driver version is still asked for
	int inited = cu && !probe_failed("cuInit", PROBE_CALL(cuInit, 0));
	if (cu && probe_failed("cuDriverGetVersion", PROBE_CALL(cuDriverGetVersion, &cuda_version)))
		cuda_version = 0;
	if (inited && probe_failed("cuDeviceGetCount", PROBE_CALL(cuDeviceGetCount, &count)))
		count = 0;
	for (int i = 0; i < count; i++) {
		CUdevice dev;
		if (probe_failed("cuDeviceGet", PROBE_CALL(cuDeviceGet, &dev, i)))
			continue;  // no handle: nothing else can be asked about this device
		int major = 0, minor = 0;
		if (probe_failed("cuDeviceGetAttribute(75)", PROBE_CALL(cuDeviceGetAttribute, &major, 75, dev)))
			major = 0;
		if (probe_failed("cuDeviceGetAttribute(76)", PROBE_CALL(cuDeviceGetAttribute, &minor, 76, dev)))
			minor = 0;
		char name[256] = "";
		if (probe_failed("cuDeviceGetName", PROBE_CALL(cuDeviceGetName, name, (int)sizeof name, dev)))
			name[0] = '\0';
		size_t total = 0;
		if (probe_failed("cuDeviceTotalMem_v2", PROBE_CALL(cuDeviceTotalMem_v2, &total, dev)))
			total = 0;
		char pci[64] = "";
		if (probe_failed("cuDeviceGetPCIBusId", PROBE_CALL(cuDeviceGetPCIBusId, pci, (int)sizeof pci, dev)))
			pci[0] = '\0';
		CUuuid u;
		char uuid[64] = "";
		int got = !probe_failed("cuDeviceGetUuid_v2", PROBE_CALL(cuDeviceGetUuid_v2, &u, dev));
		if (!got)
			got = !probe_failed("cuDeviceGetUuid", PROBE_CALL(cuDeviceGetUuid, &u, dev));
		if (got) {
			const unsigned char *b = u.bytes;
			snprintf(uuid, sizeof uuid,
			         "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			         b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
			         b[13], b[14], b[15]);
		}
		name[sizeof name - 1] = pci[sizeof pci - 1] = '\0';
		probe_clean(name);
		probe_clean(pci);
		printf("device ordinal=%d uuid=\"%s\" cc=%d.%d name=\"%s\" total=%zu pci=\"%s\"\n", i, uuid, major,
		       minor, name, total, pci);
	}

	char nvml_version[96] = "";
	void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!nvml)
		fprintf(stderr, "goserver probe: dlopen libnvidia-ml.so.1: %s\n", dlerror());
	int (*nvmlInit_v2)(void) = probe_sym(nvml, "libnvidia-ml.so.1", "nvmlInit_v2");
	int (*nvmlSystemGetDriverVersion)(char *, unsigned) =
		probe_sym(nvml, "libnvidia-ml.so.1", "nvmlSystemGetDriverVersion");
	if (nvml && !probe_failed("nvmlInit_v2", PROBE_CALL(nvmlInit_v2)) &&
	    probe_failed("nvmlSystemGetDriverVersion",
	                 PROBE_CALL(nvmlSystemGetDriverVersion, nvml_version, (unsigned)sizeof nvml_version)))
		nvml_version[0] = '\0';
	nvml_version[sizeof nvml_version - 1] = '\0';
	probe_clean(nvml_version);
	printf("driver cuda=%d nvml=\"%s\"\n", cuda_version, nvml_version);
	printf("devices=%d\n", count);
	fflush(stdout);
	return 0;
}
*/
import "C"

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func logf(level, msg string, kv ...string) {
	line := fmt.Sprintf("time=%s level=%s source=goserver msg=%q", time.Now().Format(time.RFC3339), level, msg)
	for _, f := range kv {
		line += " " + f
	}
	fmt.Fprintln(os.Stderr, line)
}

func runner() int {
	lib := os.Getenv("GGML_CUDA_LIB")
	if lib == "" {
		fmt.Fprintln(os.Stderr, "goserver runner: GGML_CUDA_LIB is not set")
		return 2
	}
	clib := C.CString(lib)
	defer C.free(unsafe.Pointer(clib))
	var n C.size_t
	var reg, handle unsafe.Pointer
	if C.goserver_discover(clib, &n, &reg, &handle) != 0 {
		fmt.Fprintf(os.Stderr, "goserver runner: %s\n", C.GoString(C.goserver_error()))
		return 3
	}
	fullInit := os.Getenv("GGML_CUDA_INIT") == "1"
	shown := 0
	for i := C.size_t(0); i < n; i++ {
		var free, total C.size_t
		var name, devID *C.char
		desc := C.GoString(C.goserver_dev_desc(handle, reg, i, &free, &total, &name, &devID))
		if fullInit && C.goserver_dev_init(handle, reg, i) == 0 {
			fmt.Fprintf(os.Stderr, "goserver runner: device %d did not initialize (ggml_backend_dev_init)\n", int(i))
			continue
		}
		// description first and total right after it: the per-libdir parser relies on it
		fmt.Printf("device id=%d description=%q total=%d free=%d name=%q device_id=%q\n", int(i), desc,
			uint64(total), uint64(free), cstr(name), cstr(devID))
		shown++
	}
	if a := C.goserver_archs(handle, reg); a != nil {
		fmt.Printf("archs value=%q\n", C.GoString(a))
	}
	fmt.Printf("devices=%d\n", shown)
	return 0
}

func cstr(s *C.char) string {
	if s == nil {
		return ""
	}
	return C.GoString(s)
}

func probe() int {
	return int(C.goserver_probe())
}

func bytesHuman(b uint64) string {
	if b == 0 {
		return "0 B"
	}
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}

// envDuration: the duration in env NAME, else def.
func envDuration(name string, def time.Duration) (time.Duration, error) {
	env := os.Getenv(name)
	if env == "" {
		return def, nil
	}
	d, err := time.ParseDuration(env)
	if err != nil {
		return 0, fmt.Errorf("%s: %v", name, err)
	}
	return d, nil
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	exitAfter := fs.Bool("exit-after-discovery", false, "exit once discovery is done instead of serving")
	defFlow := os.Getenv("GOSERVER_FLOW")
	if defFlow == "" {
		defFlow = "per-libdir"
	}
	flow := fs.String("flow", defFlow, "per-libdir (ollama 0.12.4-0.24) or two-pass (ollama 0.30+)")
	var durations [3]time.Duration
	for i, d := range []struct {
		env string
		def time.Duration
	}{{"GOSERVER_DISCOVERY_TIMEOUT", 5 * time.Second}, {"GOSERVER_PASS_TIMEOUT", 30 * time.Second},
		{"GOSERVER_PROBE_TIMEOUT", 15 * time.Second}} {
		v, err := envDuration(d.env, d.def)
		if err != nil {
			fmt.Fprintf(os.Stderr, "goserver: %v\n", err)
			return 2
		}
		durations[i] = v
	}
	def, defPass, defProbe := durations[0], durations[1], durations[2]
	timeout := fs.Duration("discovery-timeout", def, "per-libdir: kill the runner if discovery takes longer")
	passTimeout := fs.Duration("pass-timeout", defPass, "two-pass: kill a runner that takes longer")
	probeTimeout := fs.Duration("probe-timeout", defProbe, "two-pass: kill the probe if it takes longer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "goserver: %v\n", err)
		return 2
	}
	switch *flow {
	case "per-libdir":
		if rc := discoverPerLibdir(exe, *timeout); rc != 0 {
			return rc
		}
	case "two-pass":
		if rc := discoverTwoPass(exe, *passTimeout, *probeTimeout); rc != 0 {
			return rc
		}
	default:
		fmt.Fprintf(os.Stderr, "goserver: unknown flow %q (per-libdir or two-pass)\n", *flow)
		return 2
	}
	if *exitAfter {
		return 0
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		logf("WARN", "listen", fmt.Sprintf("error=%q", err.Error()))
		return 2
	}
	logf("INFO", "Listening on "+ln.Addr().String())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\ngoserver is running\n")
			c.Close()
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	s := <-sig
	logf("INFO", "shutting down", "signal="+s.String())
	ln.Close()
	return 0
}

// discoverPerLibdir: ollama 0.12.4 to 0.24, one runner (per lib dir; we have one).
func discoverPerLibdir(exe string, timeout time.Duration) int {
	logf("INFO", "discovering GPUs", "timeout="+timeout.String())
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "runner") // SIGKILL when ctx expires
	if os.Getenv("GOSERVER_DEBUG") == "2" {
		cmd.Stderr = os.Stderr
	} // else nil: /dev/null, as ollama does with its runners
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "goserver: %v\n", err)
		return 2
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf("WARN", "failed to start runner", fmt.Sprintf("error=%q", err.Error()))
		return 2
	}
	logf("INFO", "started runner", fmt.Sprintf("pid=%d", cmd.Process.Pid))
	var devices []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "device ") {
			devices = append(devices, strings.TrimPrefix(line, "device "))
		}
	}
	err = cmd.Wait()
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		logf("WARN", "runner did not finish discovery before the timeout: killed",
			fmt.Sprintf("pid=%d", cmd.Process.Pid), "signal=SIGKILL", "after="+time.Since(start).Round(time.Millisecond).String())
		devices = nil
	case errors.As(err, &exitErr):
		logf("INFO", "runner failed", fmt.Sprintf("pid=%d", cmd.Process.Pid), fmt.Sprintf("status=%q", exitErr.String()))
		devices = nil
	case err != nil:
		logf("WARN", "runner", fmt.Sprintf("error=%q", err.Error()))
		devices = nil
	}
	if len(devices) == 0 {
		logf("INFO", "inference compute", "id=cpu", "library=cpu", `compute=""`, "name=cpu", `total_vram="0 B"`)
	}
	for _, d := range devices {
		var id int
		var total, free uint64
		var desc string
		fields := strings.Fields(d)
		for _, f := range fields {
			fmt.Sscanf(f, "id=%d", &id)
			fmt.Sscanf(f, "total=%d", &total)
			fmt.Sscanf(f, "free=%d", &free)
		}
		if i := strings.Index(d, "description="); i >= 0 {
			rest := d[i+len("description="):]
			if j := strings.LastIndex(rest, "\" total="); j >= 0 {
				desc = rest[:j+1]
			}
		}
		logf("INFO", "inference compute", fmt.Sprintf("id=%d", id), "library=cuda", "name="+desc,
			fmt.Sprintf("total_vram=%q", bytesHuman(total)), fmt.Sprintf("available=%q", bytesHuman(free)))
	}
	return 0
}

// -- two-pass: ollama 0.30+ ---------------------------------------------------------------

// kv reads `key=value key="quoted value" ...` (Go-quoted values) into a map.
func kv(line string) map[string]string {
	m := map[string]string{}
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimSpace(s) {
		eq := strings.IndexByte(s, '=')
		sp := strings.IndexByte(s, ' ')
		if eq < 0 || (sp >= 0 && sp < eq) { // a bare word
			if sp < 0 {
				break
			}
			s = s[sp+1:]
			continue
		}
		key, rest := s[:eq], s[eq+1:]
		if strings.HasPrefix(rest, `"`) {
			if q, err := strconv.QuotedPrefix(rest); err == nil {
				m[key], _ = strconv.Unquote(q)
				s = rest[len(q):]
				continue
			}
		}
		if sp = strings.IndexByte(rest, ' '); sp >= 0 {
			m[key], s = rest[:sp], rest[sp:]
		} else {
			m[key], s = rest, ""
		}
	}
	return m
}

// child runs `goserver ARGS...` with EXTRA added to the environment, killed with SIGKILL
// after TIMEOUT, and returns its stdout lines; ok is false (and the reason logged) when it
// was killed, failed to start or exited non-zero. Its stderr goes where a runner's does.
func child(exe, what string, timeout time.Duration, extra []string, args ...string) (lines []string, ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, args...) // SIGKILL when ctx expires
	cmd.Env = append(os.Environ(), extra...)      // the last value of a name wins
	if os.Getenv("GOSERVER_DEBUG") == "2" {
		cmd.Stderr = os.Stderr
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf("WARN", "failed to start "+what, fmt.Sprintf("error=%q", err.Error()))
		return nil, false
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf("WARN", "failed to start "+what, fmt.Sprintf("error=%q", err.Error()))
		return nil, false
	}
	logf("DEBUG", "started "+what, fmt.Sprintf("pid=%d", cmd.Process.Pid), fmt.Sprintf("env=%q", strings.Join(extra, " ")))
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	err = cmd.Wait()
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		logf("WARN", what+" did not finish before the timeout: killed", fmt.Sprintf("pid=%d", cmd.Process.Pid),
			"signal=SIGKILL", "timeout="+timeout.String(), "after="+time.Since(start).Round(time.Millisecond).String())
		return nil, false
	case errors.As(err, &exitErr):
		logf("INFO", what+" failed", fmt.Sprintf("pid=%d", cmd.Process.Pid), fmt.Sprintf("status=%q", exitErr.String()))
		return nil, false
	case err != nil:
		logf("WARN", what, fmt.Sprintf("error=%q", err.Error()))
		return nil, false
	}
	return lines, true
}

// records: the key=value maps of the lines that start with PREFIX.
func records(lines []string, prefix string) []map[string]string {
	var rs []map[string]string
	for _, l := range lines {
		if strings.HasPrefix(l, prefix+" ") {
			rs = append(rs, kv(strings.TrimPrefix(l, prefix+" ")))
		}
	}
	return rs
}

type gpu struct {
	ordinal     string // the driver's ordinal: ggml's in pass 1 (nothing hidden) is the same
	uuid        string // "GPU-...", from the probe; ggml has none
	name, desc  string // ggml's name (CUDA0) and description
	pci         string
	compute     string // X.Y from the probe (cuDeviceGetAttribute 75/76)
	total, free uint64 // total: the probe's (cuDeviceTotalMem_v2); free: ggml's
}

// id: how ollama names the device in its log lines: the UUID, else the ordinal.
func (g gpu) id() string {
	if g.uuid != "" {
		return g.uuid
	}
	return g.ordinal
}

func atou(s string) uint64 {
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

// archsList: "750 | 890" or "750,890" -> [750 890]; nil when nothing is in it.
func archsList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == '|' || r == ',' || r == ';' || r == ' ' })
}

func discoverTwoPass(exe string, passTimeout, probeTimeout time.Duration) int {
	logf("INFO", "discovering GPUs", "flow=two-pass", "timeout="+passTimeout.String(), "probe_timeout="+probeTimeout.String())

	// Pass 1: the runner (ollama: llama-server --list-devices) and the probe (ollama gpu-discover).
	runnerOut, _ := child(exe, "runner", passTimeout, nil, "runner")
	probeOut, _ := child(exe, "probe", probeTimeout, nil, "probe")
	var archs []string
	for _, r := range records(runnerOut, "archs") {
		archs = archsList(r["value"])
	}
	if env := os.Getenv("GOSERVER_ARCHS"); env != "" {
		archs = archsList(env)
	}
	probed := map[string]map[string]string{}
	for _, p := range records(probeOut, "device") {
		probed[p["ordinal"]] = p
	}
	driver := map[string]string{}
	if d := records(probeOut, "driver"); len(d) > 0 {
		driver = d[0]
	}
	cudaDriver := ""
	if v := atou(driver["cuda"]); v > 0 {
		cudaDriver = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}

	var found []gpu
	for _, r := range records(runnerOut, "device") {
		g := gpu{ordinal: r["id"], name: r["name"], desc: r["description"], pci: r["device_id"],
			total: atou(r["total"]), free: atou(r["free"])}
		if p, ok := probed[g.ordinal]; ok {
			g.uuid, g.compute, g.total = p["uuid"], p["cc"], atou(p["total"])
			if g.pci == "" {
				g.pci = p["pci"]
			}
		} else {
			logf("DEBUG", "device not reported by the probe", "id="+g.ordinal, "library=CUDA")
		}
		found = append(found, g)
	}
	logf("DEBUG", "pass 1", fmt.Sprintf("devices=%d", len(found)), fmt.Sprintf("archs=%q", strings.Join(archs, ",")),
		fmt.Sprintf("nvml_driver=%q", driver["nvml"]))

	// The filters, in ollama's words.
	var kept []gpu
	nvml := driver["nvml"]
	major, err := strconv.Atoi(strings.SplitN(nvml, ".", 2)[0])
	tooOld := nvml != "" && err == nil && major < 550
	if tooOld && len(found) > 0 {
		logf("WARN", "NVIDIA driver too old", fmt.Sprintf("driver=%q", nvml), "minimum=550", "library=CUDA")
	}
	for _, g := range found {
		switch {
		case tooOld:
		case g.total == 0:
			logf("DEBUG", "skipping pseudo-device with zero memory", "id="+g.id(), "library=CUDA", "name="+g.name)
		case g.compute != "" && len(archs) > 0 && !inArchs(g.compute, archs):
			logf("WARN", "compute capability not in compiled architectures", "id="+g.id(), "library=CUDA",
				"compute="+g.compute, fmt.Sprintf("archs=%q", strings.Join(archs, ",")))
		default:
			kept = append(kept, g)
		}
	}

	// Pass 2: each device alone, fully initialized.
	byUUID := os.Getenv("GOSERVER_VISIBLE") == "uuid"
	var verified []gpu
	for _, g := range kept {
		visible := g.ordinal
		if byUUID && g.uuid != "" {
			visible = g.uuid
		}
		out, ok := child(exe, "runner", passTimeout, []string{"CUDA_VISIBLE_DEVICES=" + visible, "GGML_CUDA_INIT=1"}, "runner")
		back := records(out, "device")
		if !ok || len(back) == 0 {
			logf("INFO", "filtering device which didn't fully initialize", "id="+visible, "library=CUDA",
				"pci_id="+g.pci, fmt.Sprintf("devices=%d", len(back)))
			continue
		}
		if f := atou(back[0]["free"]); f > 0 {
			g.free = f
		}
		verified = append(verified, g)
	}

	if len(verified) == 0 {
		logf("INFO", "inference compute", "id=cpu", "library=cpu", `compute=""`, "name=cpu", `total_vram="0 B"`)
	}
	for _, g := range verified {
		logf("INFO", "inference compute", "id="+g.id(), "library=CUDA", "compute="+g.compute, "name="+g.name,
			fmt.Sprintf("description=%q", g.desc), "driver="+cudaDriver, "pci_id="+g.pci,
			fmt.Sprintf("total=%q", bytesHuman(g.total)), fmt.Sprintf("available=%q", bytesHuman(g.free)))
	}
	return 0
}

// inArchs: X.Y exactly among the compiled architectures (750 for 7.5), as ollama checks.
func inArchs(compute string, archs []string) bool {
	var major, minor int
	if _, err := fmt.Sscanf(compute, "%d.%d", &major, &minor); err != nil {
		return true // unknown: nothing to filter on
	}
	want := strconv.Itoa(major*100 + minor*10)
	for _, a := range archs {
		if strings.TrimSuffix(strings.TrimSuffix(a, "-real"), "-virtual") == want {
			return true
		}
	}
	return false
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: goserver serve [--exit-after-discovery] [--flow per-libdir|two-pass] [--discovery-timeout D] [--pass-timeout D] [--probe-timeout D] | goserver runner | goserver probe")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		os.Exit(serve(os.Args[2:]))
	case "runner":
		os.Exit(runner())
	case "probe":
		os.Exit(probe())
	default:
		fmt.Fprintf(os.Stderr, "goserver: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}
