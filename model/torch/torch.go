// Package torch is ringtune's thin layer over libtorch. It calls gotch's C
// API (github.com/sugarme/gotch/libtch) and a few C++ entry points of its own
// (rt.cpp), and avoids the parts of gotch that leak or exit:
//
//   - gotch's Go tensor wrappers C.malloc an output slot per op and never free
//     it, and its in-place wrappers drop the replaced C handle. Here every op
//     writes into one output slot per Scope and every handle is owned by a
//     Scope (freed together at the end of a step) or by the caller.
//   - Errors are returned (sticky per Scope, like bufio.Scanner), never
//     log.Fatal'ed.
//   - libtorch's grad mode and gotch's last-error slot are per OS thread, so
//     all calls for one model run on one locked OS thread (see Thread).
package torch

/*
#cgo CXXFLAGS: -std=c++17 -O2
#cgo LDFLAGS: -lstdc++ -ltorch_cpu -lc10
#include <stdlib.h>
#include "rt.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"github.com/sugarme/gotch/libtch"
)

// Version is the libtorch version this binary was built against.
func Version() string { return C.GoString(C.rt_version()) }

// cErr turns a message returned by rt.cpp into an error and frees it.
func cErr(p *C.char) error {
	if p == nil {
		return nil
	}
	msg := C.GoString(p)
	C.free(unsafe.Pointer(p))
	return errors.New(firstLine(msg))
}

// lastErr reads and clears gotch's per-thread error slot.
func lastErr() error {
	p := unsafe.Pointer(libtch.GetAndResetLastErr())
	if p == nil {
		return nil
	}
	return cErr((*C.char)(p))
}

// firstLine keeps libtorch's message and drops the C++ backtrace that
// c10::Error appends.
func firstLine(msg string) string {
	if i := strings.Index(msg, "\nException raised from"); i >= 0 {
		msg = msg[:i]
	}
	return strings.TrimSpace(msg)
}

// Seed seeds libtorch's global generators (at_manual_seed), so that random
// initialisation and dropout masks repeat across runs and processes.
func Seed(seed int64) error {
	if err := cErr(C.rt_manual_seed(C.int64_t(seed))); err != nil {
		return fmt.Errorf("seed libtorch: %w", err)
	}
	return nil
}

// SetThreads sets libtorch's intra-op thread count. libtorch 1.13 defaults to
// half the cores on x86 (it assumes SMT), so ringtune always sets it.
func SetThreads(n int) error {
	if n < 1 {
		return fmt.Errorf("set libtorch threads: need at least 1, got %d", n)
	}
	if err := cErr(C.rt_set_num_threads(C.int(n))); err != nil {
		return fmt.Errorf("set libtorch threads to %d: %w", n, err)
	}
	return nil
}

// Threads reports libtorch's intra-op thread count.
func Threads() int { return int(C.rt_get_num_threads()) }

// Device is a libtorch device: CPU, or a CUDA device by index.
type Device struct {
	cuda  bool
	index int
}

// CPU is the host device.
var CPU = Device{}

// CUDA returns CUDA device i.
func CUDA(i int) Device { return Device{cuda: true, index: i} }

// IsCUDA reports whether d is a CUDA device.
func (d Device) IsCUDA() bool { return d.cuda }

// String gives the flag form: "cpu" or "cuda:N".
func (d Device) String() string {
	if !d.cuda {
		return "cpu"
	}
	return "cuda:" + strconv.Itoa(d.index)
}

// code is gotch's device encoding: -1 for CPU, the index for CUDA.
func (d Device) code() int32 {
	if !d.cuda {
		return -1
	}
	return int32(d.index)
}

// ParseDevice reads "cpu", "cuda" (device 0) or "cuda:N". It does not check
// that the device exists; Device.Check does.
func ParseDevice(s string) (Device, error) {
	switch {
	case s == "cpu":
		return CPU, nil
	case s == "cuda":
		return CUDA(0), nil
	case strings.HasPrefix(s, "cuda:"):
		i, err := strconv.Atoi(strings.TrimPrefix(s, "cuda:"))
		if err != nil || i < 0 {
			return Device{}, fmt.Errorf("device %q: want cpu, cuda or cuda:N with N >= 0", s)
		}
		return CUDA(i), nil
	}
	return Device{}, fmt.Errorf("device %q: want cpu, cuda or cuda:N", s)
}

// CUDADeviceCount is the number of CUDA devices libtorch sees (0 on a CPU
// build).
func CUDADeviceCount() int { return int(C.rt_cuda_device_count()) }

// Check reports whether this binary and host can use d, with what to do
// when not.
func (d Device) Check() error {
	if !d.cuda {
		return nil
	}
	n := CUDADeviceCount()
	if n == 0 {
		return fmt.Errorf("device %s: this binary's libtorch (%s) has no CUDA device available; "+
			"use --device cpu, or on a GPU host build against a CUDA libtorch 2.x "+
			"(scripts/setup.sh --libtorch DIR) and check nvidia-smi", d, Version())
	}
	if d.index >= n {
		return fmt.Errorf("device %s: only %d CUDA device(s) visible (cuda:0..cuda:%d); "+
			"pick one of those or check CUDA_VISIBLE_DEVICES", d, n, n-1)
	}
	return nil
}

// Thread runs functions on one goroutine locked to its OS thread. libtorch's
// grad mode and gotch's error slot live in thread-local storage, so every
// call that drives one model must come from the same OS thread.
type Thread struct {
	jobs chan func()
	done chan struct{}
}

// NewThread starts a locked goroutine. Close it when done.
func NewThread() *Thread {
	t := &Thread{jobs: make(chan func()), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(t.done)
		for f := range t.jobs {
			f()
		}
	}()
	return t
}

// Do runs f on the thread and returns its error. A panic in f is returned as
// an error rather than killing the process.
func (t *Thread) Do(f func() error) error {
	errc := make(chan error, 1)
	t.jobs <- func() {
		defer func() {
			if r := recover(); r != nil {
				errc <- fmt.Errorf("torch thread: panic: %v", r)
			}
		}()
		errc <- f()
	}
	return <-errc
}

// Close stops the thread after the jobs already submitted.
func (t *Thread) Close() {
	close(t.jobs)
	<-t.done
}

// SetGradEnabled switches autograd recording on the calling OS thread and
// returns the previous setting.
func SetGradEnabled(on bool) bool {
	b := 0
	if on {
		b = 1
	}
	return libtch.AtGradSetEnabled(b) == 1
}
