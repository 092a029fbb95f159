package agent

import (
	"bytes"
	"log/slog"
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
