//go:build !unix

package agent

import "time"

// processCPU is not available here: the step timing then logs no cpu_ms.
func processCPU() (time.Duration, bool) { return 0, false }
