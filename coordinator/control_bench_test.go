package coordinator

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/ringtune/ringtune/data"
)

// loopRound and loopSchedule are the per-step bookkeeping of the former
// event loop of coordinator.go, removed when the coordinator switched to
// coordinator/machine; kept here only as BenchmarkControlLoopLogic's
// baseline: a round's reports by id in a map, and an epoch's ledger.
type loopRound struct {
	gen   uint64
	step  int
	ranks map[string]int
	ok    map[int]bool
}

func newLoopRound(gen uint64, step int, ids []string) *loopRound {
	r := &loopRound{gen: gen, step: step, ranks: make(map[string]int, len(ids)), ok: map[int]bool{}}
	for k, id := range ids {
		r.ranks[id] = k
	}
	return r
}

func (r *loopRound) report(id string, gen uint64, step int) error {
	k, ok := r.ranks[id]
	switch {
	case gen != r.gen || step != r.step || !ok:
		return fmt.Errorf("report from %s for generation %d step %d", id, gen, step)
	case r.ok[k]:
		return fmt.Errorf("second report from %s", id)
	}
	r.ok[k] = true
	return nil
}

func (r *loopRound) committable() bool { return len(r.ok) == len(r.ranks) }

type loopSchedule struct {
	s      *Schedule
	epoch  *data.Epoch
	ledger *data.Ledger
}

func (l *loopSchedule) begin(g int) error {
	e, st, err := l.s.Locate(g)
	if err != nil {
		return err
	}
	if l.epoch == nil || l.epoch.Index != e {
		if l.epoch, err = data.NewEpoch(l.s.Seed, e, l.s.N, l.s.GlobalBatch, l.s.DropLast); err != nil {
			return err
		}
		if l.ledger, err = data.LedgerFrom(l.epoch, l.s.N, st); err != nil {
			return err
		}
	}
	b, err := l.epoch.Batch(st)
	if err != nil {
		return err
	}
	return l.ledger.Assign(st, b.Fresh())
}

func (l *loopSchedule) commit(g int) error {
	_, st, err := l.s.Locate(g)
	if err != nil {
		return err
	}
	return l.ledger.Commit(st)
}

// BenchmarkControlLoopLogic is the peer of coordinator/machine's
// BenchmarkControl (scripts/bench.sh control): the per-step bookkeeping the
// former event loop did for N ranks — a round, every rank's report, the
// commit rule, the schedule's begin and commit — without its I/O. One op
// is one step.
func BenchmarkControlLoopLogic(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			const gb = 64
			s := &loopSchedule{s: &Schedule{Seed: 1, N: gb * (b.N + 1), GlobalBatch: gb, DropLast: true, Epochs: 1, MaxSteps: b.N}}
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
				if err := s.begin(g); err != nil {
					b.Fatal(err)
				}
				r := newLoopRound(1, g, ids)
				for _, id := range ids {
					if err := r.report(id, 1, g); err != nil {
						b.Fatal(err)
					}
				}
				if !r.committable() {
					b.Fatal("round not committable")
				}
				if err := s.commit(g); err != nil {
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
