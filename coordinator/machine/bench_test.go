package machine

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/ringtune/ringtune/control"
)

// BenchmarkControl is the coordinator's protocol cost per step with N
// nodes that answer at once: one op is one step (N step messages out, N
// reduced reports in, the commit, N commit messages out). It reports the
// CPU time per 1,000 steps and per node-step (scripts/bench.sh control):
// a constant per node-step is O(1) work per step per node.
func BenchmarkControl(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) { benchControl(b, n) })
	}
}

func benchControl(b *testing.B, n int) {
	const gb = 64
	m, err := New(Config{MinNodes: n, Samples: gb * (b.N + 1), GlobalBatch: gb, DropLast: true, MaxSteps: b.N, Resumed: -1,
		WaitTicks: 10, FormTicks: 10, SyncTicks: 10, StepTicks: 10, EvalTicks: 10, CheckpointTicks: 10, ExportTicks: 10, DrainTicks: 10})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%04d", i)
		m.Step(Event{Kind: Join, Node: ids[i], Session: uint64(i + 1), Ring: ids[i] + ":1", Applied: -1})
	}
	for i, id := range ids {
		m.Step(Event{Kind: Message, Msg: &Msg{Kind: SetUp, Node: id, Session: uint64(i + 1)}})
	}
	answer := func(kind Kind, reply func(req Msg) *Msg) {
		rd := m.Ready()
		m.Advance()
		for _, req := range rd.Msgs {
			if req.Kind == kind {
				m.Step(Event{Kind: Message, Msg: reply(req)})
			}
		}
	}
	answer(Gen, func(req Msg) *Msg {
		return &Msg{Kind: Joined, Node: req.Node, Session: req.Session, Gen: req.Gen, Req: req.Req}
	})
	if m.Phase() != Training {
		b.Fatalf("phase %s after forming, want training", m.Phase())
	}
	reds := make([]control.Reduced, n)
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		answer(Step, func(req Msg) *Msg {
			r := &reds[req.Rank]
			r.Count = share(req.Count, req.World, req.Rank)
			return &Msg{Kind: Reduced, Node: req.Node, Session: req.Session, Gen: req.Gen, Req: req.Req, Step: req.Step, Reduced: r}
		})
	}
	b.StopTimer()
	wall := time.Since(start)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	if m.Applied() != b.N {
		b.Fatalf("%d steps committed, want %d", m.Applied(), b.N)
	}
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(cpu.Seconds()*1000/float64(b.N), "cpu-s/1000steps")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*n), "cpu-ns/node-step")
	b.ReportMetric(float64(wall.Nanoseconds())/float64(b.N*n), "wall-ns/node-step")
}
