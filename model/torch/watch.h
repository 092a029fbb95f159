// watch.h: gradient-ready hooks for overlapping the all-reduce with
// backward (watch.cpp, used by watch.go).
#ifndef RINGTUNE_WATCH_H
#define RINGTUNE_WATCH_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

typedef struct rt_watch rt_watch;

// Registers a post hook on the gradient accumulator (AccumulateGrad node) of
// each of the n leaf parameters. While the watch is armed, the hook of
// parameter i runs right after backward has added this pass's gradient into
// grads[i] (the parameter's .grad, a view into the flat gradient block):
// when host is not NULL it first copies grads[i] to host + offsets[i]
// floats (the CUDA path: the all-reduce reads host memory), then calls the
// Go function ringtuneGradReady(handle, i). grads must stay alive while the
// watch does.
char *rt_watch_new(rt_watch **out, void *const *params, void *const *grads, const int64_t *offsets,
                   int64_t n, uintptr_t handle, float *host);
// Arms (on != 0) or disarms the hooks; backward passes while disarmed (all
// but the last micro-batch of a step) run them as no-ops.
void rt_watch_arm(rt_watch *w, int on);
// Copies grads[i] to host + offsets[i] (the CUDA path, for a parameter whose
// hook did not run in the last pass because it had no gradient in it).
char *rt_watch_copy(rt_watch *w, int64_t i);
// Removes the hooks and frees the watch.
void rt_watch_free(rt_watch *w);

#ifdef __cplusplus
}
#endif
#endif
