//go:build unix

package agent

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user + system) this process has used, all
// threads together, and whether it could be read. The step timing logs it
// per step: unlike wall-clock phases it hardly depends on what else the
// machine runs, so configurations can be compared on a loaded host.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
