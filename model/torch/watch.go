package torch

/*
#include <stdlib.h>
#include "watch.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// GradWatch reports, while backward runs, each parameter whose gradient for
// the pass is final: the all-reduce of a bucket of the flat gradient can
// start as soon as all its parameters are reported, while backward goes on
// with the layers below (see watch.cpp for why post hooks on the gradient
// accumulators, and docs/design.md for the buckets).
//
// Arm it before the last backward pass of a step, and call Finish after it.
// On CUDA the watch copies each parameter's gradient into a host block
// (Host) before reporting it, so the ring reads host memory while the
// device goes on.
type GradWatch struct {
	p    *Params
	c    *C.rt_watch
	h    cgo.Handle
	host []float32 // CUDA only: C memory, so that C++ may keep its address

	mu    sync.Mutex
	fn    func(i int)
	fired []bool
	err   error
}

// Watch registers the hooks on every parameter of p. Call it on the model's
// torch thread; Free it before p.
func (p *Params) Watch() (*GradWatch, error) {
	w := &GradWatch{p: p, fired: make([]bool, len(p.views))}
	var host *C.float
	if p.Device.IsCUDA() && p.Numel > 0 {
		host = (*C.float)(C.malloc(C.size_t(4 * p.Numel)))
		if host == nil {
			return nil, fmt.Errorf("watch gradients: cannot allocate a %d-byte host block", 4*p.Numel)
		}
		w.host = unsafe.Slice((*float32)(unsafe.Pointer(host)), p.Numel)
	}
	n := len(p.views)
	// The handles and offsets go to C in C memory (cgo forbids Go pointers
	// to Go pointers).
	arr := (*[1 << 30]unsafe.Pointer)(C.malloc(C.size_t(2*n+1) * C.size_t(unsafe.Sizeof(uintptr(0)))))
	defer C.free(unsafe.Pointer(arr))
	offs := (*[1 << 30]C.int64_t)(C.malloc(C.size_t(n+1) * 8))
	defer C.free(unsafe.Pointer(offs))
	for i := range n {
		arr[i] = unsafe.Pointer(p.views[i].c)
		arr[n+i] = unsafe.Pointer(p.gviews[i].c)
		offs[i] = C.int64_t(p.Offsets[i])
	}
	w.h = cgo.NewHandle(w)
	var cw *C.rt_watch
	if err := cErr(C.rt_watch_new(&cw, &arr[0], &arr[n], &offs[0], C.int64_t(n), C.uintptr_t(w.h), host)); err != nil {
		w.h.Delete()
		if host != nil {
			C.free(unsafe.Pointer(host))
		}
		return nil, fmt.Errorf("watch gradients: %w", err)
	}
	w.c = cw
	return w, nil
}

// Host is the host block the ready gradients are copied into on CUDA (nil
// on CPU, where the ring reads Params.GradSlice directly). It stays valid
// until Free.
func (w *GradWatch) Host() []float32 { return w.host }

// Arm makes the next backward passes call fn(i) for each parameter i (block
// order index, as in Params.Specs) once its gradient is final. fn runs on
// the thread running backward (the torch thread on CPU, an autograd device
// thread on CUDA), so it must be quick and safe for concurrent use.
func (w *GradWatch) Arm(fn func(i int)) {
	w.mu.Lock()
	w.fn = fn
	clear(w.fired)
	w.err = nil
	w.mu.Unlock()
	C.rt_watch_arm(w.c, 1)
}

// Finish disarms the watch. With flush it first reports every parameter
// that was not reported since Arm (it got no gradient in the pass: an
// unused head, or a micro-batch without any loss term), copying it to the
// host block on CUDA, so that every parameter has been reported exactly
// once. It returns a panic of fn, or a failed copy.
func (w *GradWatch) Finish(flush bool) error {
	C.rt_watch_arm(w.c, 0)
	w.mu.Lock()
	fn, err := w.fn, w.err
	var rest []int
	if flush && err == nil {
		for i, f := range w.fired {
			if !f {
				rest = append(rest, i)
				w.fired[i] = true
			}
		}
	}
	w.fn = nil
	w.mu.Unlock()
	for _, i := range rest {
		if w.host != nil {
			if err := cErr(C.rt_watch_copy(w.c, C.int64_t(i))); err != nil {
				return fmt.Errorf("watch gradients: copy %q to the host: %w", w.p.Specs[i].Name, err)
			}
		}
		if err := callReady(fn, i); err != nil {
			return err
		}
	}
	return err
}

// Free removes the hooks and frees the host block.
func (w *GradWatch) Free() {
	if w == nil || w.c == nil {
		return
	}
	C.rt_watch_free(w.c)
	w.c = nil
	w.h.Delete()
	if w.host != nil {
		C.free(unsafe.Pointer(&w.host[0]))
		w.host = nil
	}
}

func (w *GradWatch) ready(i int) {
	w.mu.Lock()
	fn := w.fn
	if fn == nil || i < 0 || i >= len(w.fired) || w.fired[i] {
		// Not armed (a race with Finish), or a second report of one
		// parameter in one pass, which the engine does not make.
		w.mu.Unlock()
		return
	}
	w.fired[i] = true
	w.mu.Unlock()
	if err := callReady(fn, i); err != nil {
		w.mu.Lock()
		if w.err == nil {
			w.err = err
		}
		w.mu.Unlock()
	}
}

// callReady calls fn(i), turning a panic into an error: a panic must not
// unwind through libtorch's C++ frames.
func callReady(fn func(int), i int) (err error) {
	if fn == nil {
		return errors.New("watch gradients: not armed")
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("watch gradients: ready callback for parameter %d: panic: %v", i, r)
		}
	}()
	fn(i)
	return nil
}

//export ringtuneGradReady
func ringtuneGradReady(h C.uintptr_t, i C.int64_t) {
	w, ok := cgo.Handle(h).Value().(*GradWatch)
	if !ok {
		return
	}
	w.ready(int(i))
}
