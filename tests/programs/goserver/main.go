// goserver: an ollama-shaped server, for the tests. Like ollama 0.12.4 to 0.24:
//
//	goserver serve [--exit-after-discovery] [--discovery-timeout DURATION]
//	goserver runner
//
// `serve` re-executes itself as `goserver runner` (os/exec), with the runner's stderr
// discarded as ollama does (GOSERVER_DEBUG=2 passes it through, like OLLAMA_DEBUG=2),
// reads the devices the runner found from its stdout, and kills the runner with SIGKILL
// when it has not finished after the discovery timeout (default 5s, or
// GOSERVER_DISCOVERY_TIMEOUT; ollama waits 30s). It then logs one line,
//
//	msg="inference compute" id=cpu library=cpu ... total_vram="0 B"
//
// when no CUDA device was found, and keeps running, listening on 127.0.0.1 (an ephemeral
// port) until SIGINT or SIGTERM, unless --exit-after-discovery.
//
// `runner` dlopens the libggml-cuda named by GGML_CUDA_LIB (like tests/programs/probe.c)
// through cgo, calls ggml_backend_cuda_reg(), which runs ggml_cuda_init (ggml logs its
// error text to stderr), and prints one `device ...` line per device on stdout.
// Go writes its own logs with raw write syscalls, not libc's write().
package main

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

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

static const char *goserver_dev_desc(void *h, void *reg, size_t i, size_t *free_b, size_t *total_b) {
	dev_get_fn get = (dev_get_fn)dlsym(h, "ggml_backend_reg_dev_get");
	str_fn desc = (str_fn)dlsym(h, "ggml_backend_dev_description");
	mem_fn mem = (mem_fn)dlsym(h, "ggml_backend_dev_memory");
	*free_b = *total_b = 0;
	if (!get || !desc || !mem)
		return "?";
	void *dev = get(reg, i);
	mem(dev, free_b, total_b);
	return desc(dev);
}

static const char *goserver_error(void) { return goserver_err; }
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
	for i := C.size_t(0); i < n; i++ {
		var free, total C.size_t
		desc := C.GoString(C.goserver_dev_desc(handle, reg, i, &free, &total))
		fmt.Printf("device id=%d description=%q total=%d free=%d\n", int(i), desc, uint64(total), uint64(free))
	}
	fmt.Printf("devices=%d\n", int(n))
	return 0
}

func bytesHuman(b uint64) string {
	if b == 0 {
		return "0 B"
	}
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	exitAfter := fs.Bool("exit-after-discovery", false, "exit once discovery is done instead of serving")
	def := 5 * time.Second
	if env := os.Getenv("GOSERVER_DISCOVERY_TIMEOUT"); env != "" {
		d, err := time.ParseDuration(env)
		if err != nil {
			fmt.Fprintf(os.Stderr, "goserver: GOSERVER_DISCOVERY_TIMEOUT: %v\n", err)
			return 2
		}
		def = d
	}
	timeout := fs.Duration("discovery-timeout", def, "kill the runner if discovery takes longer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "goserver: %v\n", err)
		return 2
	}
	logf("INFO", "discovering GPUs", "timeout="+timeout.String())
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
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

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: goserver serve [--exit-after-discovery] [--discovery-timeout D] | goserver runner")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		os.Exit(serve(os.Args[2:]))
	case "runner":
		os.Exit(runner())
	default:
		fmt.Fprintf(os.Stderr, "goserver: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}
