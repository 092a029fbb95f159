package agent

import (
	"bytes"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStepTimingLogsWallClock: the step's debug line carries the wall clock
// of sending reduced and of taking the commit, in µs since the epoch (the
// commit latency benchmark, scripts/bench.sh control, joins the nodes' lines
// on them), next to their difference, commit_wait_ms.
func TestStepTimingLogsWallClock(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	red := time.Date(2026, 11, 30, 12, 0, 0, 123456000, time.UTC)
	com := red.Add(1500 * time.Microsecond)
	tm := stepTiming{start: red.Add(-time.Millisecond), computed: red.Add(-time.Millisecond), reduced: red, commit: com, applied: com.Add(time.Millisecond)}
	tm.log(l, 7, 0)
	line := buf.String()
	for _, want := range []string{
		"step=7 ",
		"commit_wait_ms=1.5 ",
		"reduced_at_us=" + strconv.FormatInt(red.UnixMicro(), 10) + " ",
		"commit_at_us=" + strconv.FormatInt(com.UnixMicro(), 10) + "\n",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("step timing line lacks %q:\n%s", want, line)
		}
	}
	if !tm.reduced.IsZero() || tm.prevApplied != com.Add(time.Millisecond) {
		t.Errorf("log did not reset the step's moments for the next step: %+v", tm)
	}
}

// TestStepTimingLogsCPU: from the second step on, the step's debug line
// carries the process's CPU time since the previous step's end (cpu_ms),
// which compares configurations on a loaded host; the first step, with
// nothing to measure from, says -1.
func TestStepTimingLogsCPU(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	now := time.Now()
	tm := stepTiming{start: now, computed: now, reduced: now, commit: now, applied: now}
	tm.log(l, 0, 0)
	if !strings.Contains(buf.String(), " cpu_ms=-1 ") {
		t.Fatalf("first step's line lacks cpu_ms=-1:\n%s", buf.String())
	}
	// Burn some CPU between the two steps' ends.
	x := 1.0
	for i := 0; i < 20_000_000; i++ {
		x = x*1.0000001 + 1e-9
	}
	tm.start, tm.computed, tm.reduced, tm.commit, tm.applied = now, now, now, now, now
	buf.Reset()
	tm.log(l, 1, int64(x)%2)
	m := regexp.MustCompile(` cpu_ms=([0-9.]+) `).FindStringSubmatch(buf.String())
	if m == nil {
		t.Fatalf("second step's line lacks a measured cpu_ms:\n%s", buf.String())
	}
	if v, _ := strconv.ParseFloat(m[1], 64); v <= 0 {
		t.Errorf("cpu_ms %v after a busy loop, want > 0", v)
	}
}
