package data

import (
	"fmt"
	"slices"
)

// Ledger records, for one epoch, which samples are free, assigned to an
// in-flight step, or committed, so that failure handling can guarantee that
// every sample is trained on in exactly one committed step of the epoch. It
// is not safe for concurrent use; the coordinator owns it.
type Ledger struct {
	owner    []int // per sample: -1 free, step number while assigned
	done     []bool
	steps    map[int][]int // in-flight step -> its samples
	returned []int         // put back by aborted steps, oldest first
	nDone    int
}

// NewLedger starts an epoch of n free samples.
func NewLedger(n int) *Ledger {
	l := &Ledger{owner: make([]int, n), done: make([]bool, n), steps: map[int][]int{}}
	for i := range l.owner {
		l.owner[i] = -1
	}
	return l
}

// Assign marks samples as in flight for step. It fails, changing nothing, if
// any sample is out of range, repeated, already in flight or committed, or if
// step is already in flight: each would break exactly-once.
func (l *Ledger) Assign(step int, samples []int) error {
	if _, busy := l.steps[step]; busy {
		return fmt.Errorf("ledger: step %d is already in flight", step)
	}
	seen := map[int]bool{}
	for _, s := range samples {
		switch {
		case s < 0 || s >= len(l.owner):
			return fmt.Errorf("ledger: step %d: sample %d out of range [0, %d)", step, s, len(l.owner))
		case seen[s]:
			return fmt.Errorf("ledger: step %d: sample %d listed twice", step, s)
		case l.done[s]:
			return fmt.Errorf("ledger: step %d: sample %d was already committed", step, s)
		case l.owner[s] >= 0:
			return fmt.Errorf("ledger: step %d: sample %d is in flight in step %d", step, s, l.owner[s])
		}
		seen[s] = true
	}
	for _, s := range samples {
		l.owner[s] = step
	}
	l.steps[step] = slices.Clone(samples)
	l.returned = slices.DeleteFunc(l.returned, func(s int) bool { return seen[s] })
	return nil
}

// Commit marks step's samples as trained on for good.
func (l *Ledger) Commit(step int) error {
	samples, ok := l.steps[step]
	if !ok {
		return fmt.Errorf("ledger: commit of step %d, which is not in flight", step)
	}
	for _, s := range samples {
		l.owner[s] = -1
		l.done[s] = true
	}
	l.nDone += len(samples)
	delete(l.steps, step)
	return nil
}

// Return puts an aborted step's samples back and returns them. They stay
// pending (see Returned) until assigned again.
func (l *Ledger) Return(step int) ([]int, error) {
	samples, ok := l.steps[step]
	if !ok {
		return nil, fmt.Errorf("ledger: return of step %d, which is not in flight", step)
	}
	for _, s := range samples {
		l.owner[s] = -1
	}
	delete(l.steps, step)
	l.returned = append(l.returned, samples...)
	return slices.Clone(samples), nil
}

// Returned lists samples put back by aborted steps and not yet reassigned,
// oldest first. The coordinator replays the aborted step with exactly these
// samples, so the run's data order is the same as without the failure.
func (l *Ledger) Returned() []int { return slices.Clone(l.returned) }

// InFlight lists the steps assigned but neither committed nor returned.
func (l *Ledger) InFlight() []int {
	var out []int
	for s := range l.steps {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// Committed counts committed samples.
func (l *Ledger) Committed() int { return l.nDone }

// Complete reports whether every sample of the epoch is committed.
func (l *Ledger) Complete() bool { return l.nDone == len(l.done) }

// Missing lists samples not committed, for an error at the end of an epoch.
func (l *Ledger) Missing() []int {
	var out []int
	for i, d := range l.done {
		if !d {
			out = append(out, i)
		}
	}
	return out
}

// LedgerFrom is the ledger of epoch ep as of its step st: the samples of
// steps 0..st-1 committed. A run resumed, or rolled back, in the middle of
// an epoch starts its ledger this way.
func LedgerFrom(ep *Epoch, n, st int) (*Ledger, error) {
	l := NewLedger(n)
	for k := 0; k < st; k++ {
		b, err := ep.Batch(k)
		if err != nil {
			return nil, err
		}
		if err := l.Assign(k, b.Fresh()); err != nil {
			return nil, err
		}
		if err := l.Commit(k); err != nil {
			return nil, err
		}
	}
	return l, nil
}
