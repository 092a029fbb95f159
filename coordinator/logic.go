package coordinator

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
)

// Candidate is a node that may join a world: its session is open and its
// trainer set up.
type Candidate struct {
	ID   string
	Ring string // ring gRPC address, from its gossip metadata
}

// FormWorld orders candidates into the ring of a new generation: sorted by
// id (so that a world formed from the same nodes always has the same ranks)
// and capped at maxNodes; the rest are spares.
func FormWorld(cands []Candidate, maxNodes int) (world, spares []Candidate) {
	c := slices.Clone(cands)
	slices.SortFunc(c, func(a, b Candidate) int { return strings.Compare(a.ID, b.ID) })
	if maxNodes > 0 && len(c) > maxNodes {
		return c[:maxNodes], c[maxNodes:]
	}
	return c, nil
}

// RoundKind says what a Round collects: a typed kind instead of the step
// number -1 that used to mark readiness rounds (issue 11, defect 5).
type RoundKind int

// Round kinds.
const (
	// StepRound collects the reduced or failed reports of one step.
	StepRound RoundKind = iota
	// ReadyRound collects the ranks' ready answers to a new generation.
	ReadyRound
)

// Round tracks the answers of every rank of one generation to one request
// (a step or a readiness check). It is the commit rule: a step commits
// only when every rank has reported it reduced.
type Round struct {
	Kind RoundKind
	Gen  uint64
	Step int      // the step of a StepRound
	IDs  []string // rank order
	// AbortSent records that the ranks were already told to abort this
	// step (a rank was lost while it was in flight).
	AbortSent bool
	ok        map[int]bool
	fail      map[int]string
	// ranks maps ids to ranks: a report costs O(1), not a search of
	// the world (issue 11, defect 6).
	ranks map[string]int
}

// NewRound starts the round of step for the ranks ids of generation gen.
func NewRound(gen uint64, step int, ids []string) *Round {
	r := &Round{Kind: StepRound, Gen: gen, Step: step, IDs: ids, ok: map[int]bool{}, fail: map[int]string{}, ranks: make(map[string]int, len(ids))}
	for k, id := range ids {
		r.ranks[id] = k
	}
	return r
}

// NewReadyRound starts the readiness round of generation gen.
func NewReadyRound(gen uint64, ids []string) *Round {
	r := NewRound(gen, 0, ids)
	r.Kind = ReadyRound
	return r
}

func (r *Round) rank(id string) int {
	if k, ok := r.ranks[id]; ok {
		return k
	}
	return -1
}

// Report records that node id answered for (gen, step) of a StepRound:
// success or a failure message. A report of another generation or step,
// from a node outside the generation, or a second report of one rank is
// an error that names the node and both values, and changes nothing.
func (r *Round) Report(id string, gen uint64, step int, failure string) error {
	if r.Kind != StepRound {
		return fmt.Errorf("report from %s for step %d while generation %d is forming", id, step, r.Gen)
	}
	k, err := r.check(id, gen)
	if err != nil {
		return err
	}
	if step != r.Step {
		return fmt.Errorf("report from %s (rank %d) for step %d, current step is %d", id, k, step, r.Step)
	}
	return r.record(k, id, failure)
}

// ReportReady records that node id joined generation gen (a ReadyRound),
// with the same checks as Report.
func (r *Round) ReportReady(id string, gen uint64) error {
	if r.Kind != ReadyRound {
		return fmt.Errorf("ready from %s while step %d is in flight", id, r.Step)
	}
	k, err := r.check(id, gen)
	if err != nil {
		return err
	}
	return r.record(k, id, "")
}

// check returns id's rank in the round's generation.
func (r *Round) check(id string, gen uint64) (int, error) {
	if err := control.CheckGen(id, r.Gen, gen); err != nil {
		return -1, err
	}
	k := r.rank(id)
	if k < 0 {
		return -1, fmt.Errorf("report from %s, which is not a rank of generation %d", id, r.Gen)
	}
	return k, nil
}

// record stores rank k's answer, refusing a second one.
func (r *Round) record(k int, id, failure string) error {
	if r.ok[k] || r.fail[k] != "" {
		if r.Kind == ReadyRound {
			return fmt.Errorf("second ready from %s (rank %d) for generation %d", id, k, r.Gen)
		}
		return fmt.Errorf("second report from %s (rank %d) for step %d", id, k, r.Step)
	}
	if failure != "" {
		r.fail[k] = failure
	} else {
		r.ok[k] = true
	}
	return nil
}

// Lost records that node id is gone (its session broke, gossip declared it
// dead, or it missed the deadline).
func (r *Round) Lost(id string) {
	if k := r.rank(id); k >= 0 && !r.ok[k] && r.fail[k] == "" {
		r.fail[k] = "lost"
	}
}

// Answered reports whether every rank has answered or is lost.
func (r *Round) Answered() bool { return len(r.ok)+len(r.fail) == len(r.IDs) }

// Committable reports whether every rank reported success: the commit rule.
func (r *Round) Committable() bool { return len(r.ok) == len(r.IDs) }

// Failed describes the failed ranks, or returns "" if none failed.
func (r *Round) Failed() string {
	var parts []string
	for k, id := range r.IDs {
		if f := r.fail[k]; f != "" {
			parts = append(parts, fmt.Sprintf("rank %d (%s): %s", k, id, f))
		}
	}
	return strings.Join(parts, "; ")
}

// Silent lists the ids that have not answered.
func (r *Round) Silent() []string {
	var out []string
	for k, id := range r.IDs {
		if !r.ok[k] && r.fail[k] == "" {
			out = append(out, id)
		}
	}
	return out
}

// CompareDigests checks that every rank reported the same parameter digest
// after step; the error names the ranks that disagree with rank 0.
func CompareDigests(step int, ids []string, sums map[string]string) error {
	var bad []string
	ref := sums[ids[0]]
	for k, id := range ids[1:] {
		if sums[id] != ref {
			bad = append(bad, fmt.Sprintf("rank %d (%s) has %.16s", k+1, id, sums[id]))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("replicas diverged after %d committed steps: rank 0 (%s) has parameter digest %.16s but %s", step, ids[0], ref, strings.Join(bad, ", "))
	}
	return nil
}

// Schedule is the data side of the run: the epochs' permutations and the
// sample ledger that makes every sample of an epoch land in exactly one
// committed step, whatever aborts happen.
type Schedule struct {
	Seed        int64
	N           int
	GlobalBatch int
	DropLast    bool
	Epochs      int
	MaxSteps    int

	epoch    *data.Epoch
	ledger   *data.Ledger
	perEpoch int // cached StepsPerEpoch
}

// StepsPerEpoch is the number of global steps of one epoch. The settings
// are checked (and an epoch's permutation built) only the first time:
// every step locates itself with it, and rebuilding an O(dataset)
// permutation per call cost the coordinator its CPU (issue 11, defect 6).
func (s *Schedule) StepsPerEpoch() (int, error) {
	if s.perEpoch > 0 {
		return s.perEpoch, nil
	}
	ep, err := data.NewEpoch(s.Seed, 0, s.N, s.GlobalBatch, s.DropLast)
	if err != nil {
		return 0, err
	}
	s.perEpoch = ep.Steps()
	return s.perEpoch, nil
}

// Total is the number of global steps of the run.
func (s *Schedule) Total() (int, error) {
	per, err := s.StepsPerEpoch()
	if err != nil {
		return 0, err
	}
	t := per * s.Epochs
	if s.MaxSteps > 0 && s.MaxSteps < t {
		t = s.MaxSteps
	}
	return t, nil
}

// Locate maps a global step to its epoch and step in the epoch.
func (s *Schedule) Locate(global int) (epoch, step int, err error) {
	per, err := s.StepsPerEpoch()
	if err != nil {
		return 0, 0, err
	}
	return global / per, global % per, nil
}

// Begin returns the batch of global step g and marks its fresh samples in
// flight in the epoch's ledger (starting the epoch's ledger when g is its
// first step seen). Samples of steps committed before a resume count as
// committed.
func (s *Schedule) Begin(g int) (data.StepBatch, error) {
	e, st, err := s.Locate(g)
	if err != nil {
		return data.StepBatch{}, err
	}
	if s.epoch == nil || s.epoch.Index != e {
		ep, err := data.NewEpoch(s.Seed, e, s.N, s.GlobalBatch, s.DropLast)
		if err != nil {
			return data.StepBatch{}, err
		}
		// Resumed or rolled back mid-epoch: the earlier steps are done.
		l, err := data.LedgerFrom(ep, s.N, st)
		if err != nil {
			return data.StepBatch{}, err
		}
		s.epoch, s.ledger = ep, l
	}
	b, err := s.epoch.Batch(st)
	if err != nil {
		return b, err
	}
	return b, s.ledger.Assign(st, b.Fresh())
}

// Reset forgets the epoch's ledger, so that the next Begin rebuilds it
// with the steps before it counted as committed (after the run rolled
// back to a checkpoint: the steps after it are undone).
func (s *Schedule) Reset() { s.epoch, s.ledger = nil, nil }

// Abort puts step g's samples back.
func (s *Schedule) Abort(g int) error {
	_, st, err := s.Locate(g)
	if err != nil {
		return err
	}
	_, err = s.ledger.Return(st)
	return err
}

// Commit records step g as trained on; at the end of an epoch it checks
// that every sample was committed exactly once.
func (s *Schedule) Commit(g int) (epochDone bool, err error) {
	_, st, err := s.Locate(g)
	if err != nil {
		return false, err
	}
	if err := s.ledger.Commit(st); err != nil {
		return false, err
	}
	if st == s.epoch.Steps()-1 {
		// With drop_last the samples after the last full batch belong
		// to no step: the epoch is complete without them.
		want := s.N
		if s.DropLast {
			want = s.epoch.Steps() * s.GlobalBatch
		}
		if s.ledger.Committed() != want {
			return true, fmt.Errorf("epoch %d ended with %d samples never committed (first: %v)", s.epoch.Index, len(s.ledger.Missing()), s.ledger.Missing()[:min(5, len(s.ledger.Missing()))])
		}
		return true, nil
	}
	return false, nil
}

// Ledger is the current epoch's ledger (for tests and reports).
func (s *Schedule) Ledger() *data.Ledger { return s.ledger }

// GlobalCount is the divisor of step's summed gradient: its number of
// samples, for causal LM its number of next-token targets (each sequence
// predicts all but its first token, less the labels set to -100 and the
// first token of each packed document; see data.Encoded.Targets), and for
// masked LM and token classification its number of labelled tokens (enc
// must be masked).
func GlobalCount(task data.Task, enc []data.Encoded, indices []int) int {
	if task == data.MaskedLM || task == data.TokenClassification {
		n := 0
		for _, i := range indices {
			for _, l := range enc[i].Labels {
				if l != data.IgnoreIndex {
					n++
				}
			}
		}
		return n
	}
	if task != data.CausalLM {
		return len(indices)
	}
	n := 0
	for _, i := range indices {
		n += enc[i].Targets()
	}
	return n
}

// RankBatches collates rank's share of indices in a world of size world into
// micro-batches.
func RankBatches(enc []data.Encoded, indices []int, world, rank, micro int, task data.Task, pad int) ([]*data.Batch, error) {
	share, err := data.Shard(indices, world, rank)
	if err != nil {
		return nil, err
	}
	mbs, err := data.MicroBatches(share, micro)
	if err != nil {
		return nil, err
	}
	out := make([]*data.Batch, 0, len(mbs))
	for _, mb := range mbs {
		items := make([]data.Encoded, len(mb))
		for i, k := range mb {
			items[i] = enc[k]
		}
		b, err := data.Collate(items, task, pad)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// checkCount verifies that the ranks' loss counts of step g add up to the
// divisor the coordinator sent with it. A difference means the data side
// (GlobalCount) and the model count targets differently, which would scale
// every update wrongly without any other sign, so it stops the run.
func checkCount(g, count int, reduced map[string]*control.Reduced) error {
	n := 0
	for _, r := range reduced {
		n += r.Count
	}
	if n != count {
		return fmt.Errorf("step %d: the ranks counted %d loss targets but the step's divisor is %d: the coordinator's data and the nodes' model disagree on what a target is (a bug; report it with the dataset's format and data.pack)", g, n, count)
	}
	return nil
}
