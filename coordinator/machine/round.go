package machine

import (
	"fmt"
	"strings"

	"github.com/ringtune/ringtune/control"
)

// round tracks the answers of a generation's ranks to one request: which
// ranks it went to, which answered, and how. Its reply kind is typed (a
// generation's readiness round expects Joined, a step's Reduced), and a
// reply counts only with the round's generation, request id and, for a
// step, step number, from a rank the request went to, once.
type round struct {
	reply Kind
	gen   uint64
	req   uint64
	step  int
	want  []bool // by rank: the request went to this rank
	ok    []bool
	fail  []string
	nWant int
	nOK   int

	reduced []*control.Reduced // step rounds, by rank
	eval    control.EvalSums   // eval rounds, summed
}

func newRound(reply Kind, gen, req uint64, step, size int, want func(rank int) bool) *round {
	r := &round{reply: reply, gen: gen, req: req, step: step, want: make([]bool, size), ok: make([]bool, size), fail: make([]string, size)}
	for k := range r.want {
		if want == nil || want(k) {
			r.want[k] = true
			r.nWant++
		}
	}
	if reply == Reduced {
		r.reduced = make([]*control.Reduced, size)
	}
	return r
}

// check tells whether m, from rank k, answers this round; the error names
// the sender and both values when it does not.
func (r *round) check(k int, m *Msg) error {
	switch {
	case m.Gen != r.gen:
		return fmt.Errorf("stale message from %s: generation %d, current generation is %d", m.Node, m.Gen, r.gen)
	case m.Req != r.req:
		return fmt.Errorf("%s from %s answers request %d, the outstanding request is %d", m.Kind, m.Node, m.Req, r.req)
	case k < 0 || k >= len(r.want) || !r.want[k]:
		return fmt.Errorf("%s from %s, which request %d did not go to", m.Kind, m.Node, r.req)
	case r.reply == Reduced && m.Step != r.step:
		return fmt.Errorf("%s from %s for step %d, the step in flight is %d", m.Kind, m.Node, m.Step, r.step)
	case r.ok[k] || r.fail[k] != "":
		return fmt.Errorf("second answer from %s (rank %d) to request %d", m.Node, k, r.req)
	}
	return nil
}

func (r *round) succeed(k int) { r.ok[k] = true; r.nOK++ }

func (r *round) failRank(k int, why string) {
	if k >= 0 && k < len(r.want) && r.want[k] && !r.ok[k] && r.fail[k] == "" {
		r.fail[k] = why
	}
}

// complete reports whether every rank the request went to succeeded: for
// a step, the commit rule.
func (r *round) complete() bool { return r.nOK == r.nWant }

// silent lists the ranks that owe an answer.
func (r *round) silent() []int {
	var out []int
	for k, w := range r.want {
		if w && !r.ok[k] && r.fail[k] == "" {
			out = append(out, k)
		}
	}
	return out
}

// failed describes the failed ranks.
func (r *round) failed(ids []string) string {
	var parts []string
	for k, f := range r.fail {
		if f != "" {
			parts = append(parts, fmt.Sprintf("rank %d (%s): %s", k, ids[k], f))
		}
	}
	return strings.Join(parts, "; ")
}

// digests collects the ranks' parameter digests after one committed step
// count (the answer to a commit that asked for them).
type digests struct {
	gen  uint64
	req  uint64
	sums []string // by rank
	n    int
}
