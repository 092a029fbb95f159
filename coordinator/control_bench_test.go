package coordinator

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// BenchmarkControlLoopLogic is the peer of coordinator/machine's
// BenchmarkControl (scripts/bench.sh control): the per-step bookkeeping the
// event loop of coordinator.go does for N ranks — a Round, every rank's
// report, the commit rule, the schedule's Begin and Commit — without its
// I/O. One op is one step.
func BenchmarkControlLoopLogic(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			const gb = 64
			s := &Schedule{Seed: 1, N: gb * (b.N + 1), GlobalBatch: gb, DropLast: true, Epochs: 1, MaxSteps: b.N}
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("n%04d", i)
			}
			var before, after syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			start := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			for g := 0; g < b.N; g++ {
				if _, err := s.Begin(g); err != nil {
					b.Fatal(err)
				}
				r := NewRound(1, g, ids)
				for _, id := range ids {
					if err := r.Report(id, 1, g, ""); err != nil {
						b.Fatal(err)
					}
				}
				if !r.Committable() {
					b.Fatal("round not committable")
				}
				if _, err := s.Commit(g); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			wall := time.Since(start)
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
			cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
			b.ReportMetric(cpu.Seconds()*1000/float64(b.N), "cpu-s/1000steps")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*n), "cpu-ns/node-step")
			b.ReportMetric(float64(wall.Nanoseconds())/float64(b.N*n), "wall-ns/node-step")
		})
	}
}
