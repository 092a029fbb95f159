// Package dash is the coordinator's live dashboard: a Board that the
// coordinator's loop feeds with committed steps, evaluations, generations
// and per-node step reports, and the HTTP handler that serves the page, its
// vendored chart library (uPlot, under web/uplot) and the Board's JSON.
//
// Everything the page plots lives in memory, bounded: the step history is
// thinned by half when it fills (so a long run keeps its whole shape at a
// coarser grain), generation marks keep the newest, and the node table keeps
// every live node but only the most recent lost ones.
package dash

import (
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Bounds of the history the Board keeps.
const (
	// MaxHistory is the most committed-step points kept (and plotted);
	// past it every other point is dropped.
	MaxHistory = 2000
	// MaxEvals is the most evaluations kept, thinned the same way.
	MaxEvals = 500
	// MaxGenerations is the most generation marks kept (the newest).
	MaxGenerations = 200
	// MaxLostNodes is the most lost nodes the table keeps (the newest).
	MaxLostNodes = 32
	// RateWindow is how many commits the plotted samples/s spans: short
	// enough to show a slowdown, long enough not to be one step's noise.
	RateWindow = 10
)

// Node states shown in the table.
const (
	StateJoined   = "joined"   // connected, not yet in a generation
	StateForming  = "forming"  // a new generation is being formed
	StateTraining = "training" // a rank of the current generation
	StateSpare    = "spare"    // set up, but left out of the current generation (max_nodes)
	StateLost     = "lost"     // session broken, gossip dead, or silent
)

// Num is a float64 that encodes NaN and ±Inf as JSON null (encoding/json
// refuses them), so a diverged loss shows as a gap instead of breaking the
// status endpoint. It encodes NumDigits significant digits: what a chart
// or a card can show, at about half the bytes of a full float64 (the page
// polls the whole history every second).
type Num float64

// NumDigits is how many significant digits a Num keeps in JSON.
const NumDigits = 7

// MarshalJSON implements json.Marshaler.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, f, 'g', NumDigits, 64), nil
}

// UnmarshalJSON implements json.Unmarshaler; null reads as NaN.
func (n *Num) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = Num(math.NaN())
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*n = Num(f)
	return nil
}

// Status is the JSON of /status: the run's cards, its histories as columns
// (the layout uPlot takes), and the node table.
type Status struct {
	Run          string         `json:"run"`
	Task         string         `json:"task"`
	Applied      int            `json:"applied"`
	Total        int            `json:"total"`
	Epoch        int            `json:"epoch"`
	Loss         Num            `json:"loss"`
	SamplesPerS  Num            `json:"samples_per_s"` // since the run started
	Samples      int            `json:"samples"`       // in committed steps
	Generation   uint64         `json:"generation"`
	WorldSize    int            `json:"world_size"`
	Nodes        []string       `json:"nodes"` // the current generation's ids, in rank order
	Aborted      int            `json:"aborted_steps"`
	Lost         int            `json:"lost_nodes"`
	Eval         map[string]Num `json:"eval,omitempty"` // the last evaluation
	EvalStep     int            `json:"eval_step"`
	StartedUnixS float64        `json:"started_unix_s"`
	UpdatedUnixS float64        `json:"updated_unix_s"`

	History     History   `json:"history"`
	Evals       Evals     `json:"evals"`
	Generations []GenMark `json:"generations"`
	NodeTable   []Node    `json:"node_table"`
	NodeColumns []Column  `json:"node_columns"` // the metric columns some node reports, in display order
}

// History holds one point per committed step (thinned past MaxHistory).
type History struct {
	T    []float64 `json:"t"` // unix seconds of the commit
	Step []int     `json:"step"`
	Loss []Num     `json:"loss"`
	// Rate is samples/s over the last RateWindow commits; null for the
	// first commit, which has no interval.
	Rate []Num `json:"samples_per_s"`
}

// Evals holds one point per evaluation; Metrics has a column per metric
// name, null where an evaluation lacked it.
type Evals struct {
	T       []float64        `json:"t"`
	Step    []int            `json:"step"`
	Metrics map[string][]Num `json:"metrics"`
}

// GenMark is a generation that formed: the page marks it on the time axes.
type GenMark struct {
	Gen  uint64  `json:"gen"`
	Size int     `json:"size"`
	Step int     `json:"step"` // committed steps when it formed
	T    float64 `json:"t"`
}

// Node is one row of the node table.
type Node struct {
	ID    string `json:"id"`
	Rank  int    `json:"rank"` // -1 outside the current generation
	State string `json:"state"`
	// Step is the step the metrics are from, -1 before the first report.
	Step    int            `json:"step"`
	T       float64        `json:"t"` // unix seconds of that report
	Metrics map[string]Num `json:"metrics"`
	since   uint64         // Board.seq when it entered its state (orders lost nodes)
}

// Column is a metric column of the node table.
type Column struct {
	Key   string `json:"key"`
	Label string `json:"label"`
}

// Board is the dashboard's state. Its methods are safe for concurrent use,
// and a nil *Board ignores every update, so a coordinator without a
// dashboard needs no checks.
type Board struct {
	mu    sync.Mutex
	st    Status
	nodes map[string]*Node
	// recent holds (time, cumulative samples) of the last RateWindow+1
	// commits, for the windowed rate.
	recent []rateMark
	seq    uint64 // counts node state changes
}

type rateMark struct {
	t       time.Time
	samples int
}

// New returns the Board of run id run, a task of total steps.
func New(run, task string, total int) *Board {
	now := unix(time.Now())
	return &Board{
		st: Status{Run: run, Task: task, Total: total, Nodes: []string{}, StartedUnixS: now, UpdatedUnixS: now,
			Evals: Evals{Metrics: map[string][]Num{}}},
		nodes: map[string]*Node{},
	}
}

func unix(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }

func (b *Board) update(f func(s *Status, now time.Time)) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	f(&b.st, now)
	b.st.UpdatedUnixS = unix(now)
}

// Step records a committed step: applied steps so far, its epoch and mean
// loss, the coordinator's samples/s since the start, and the samples it
// held.
func (b *Board) Step(applied, epoch int, loss, rate float64, samples int) {
	b.update(func(s *Status, now time.Time) {
		s.Applied, s.Epoch, s.Loss, s.SamplesPerS = applied, epoch, Num(loss), Num(rate)
		s.Samples += samples
		b.recent = append(b.recent, rateMark{now, s.Samples})
		if len(b.recent) > RateWindow+1 {
			b.recent = append(b.recent[:0], b.recent[len(b.recent)-RateWindow-1:]...)
		}
		win := Num(math.NaN())
		if first, last := b.recent[0], b.recent[len(b.recent)-1]; len(b.recent) > 1 {
			if dt := last.t.Sub(first.t).Seconds(); dt > 0 {
				win = Num(float64(last.samples-first.samples) / dt)
			}
		}
		h := &s.History
		h.T = append(h.T, unix(now))
		h.Step = append(h.Step, applied)
		h.Loss = append(h.Loss, Num(loss))
		h.Rate = append(h.Rate, win)
		if len(h.T) > MaxHistory {
			h.T, h.Step, h.Loss, h.Rate = halve(h.T), halve(h.Step), halve(h.Loss), halve(h.Rate)
		}
	})
}

// halve keeps every other element, always including the newest, in place.
func halve[T any](xs []T) []T {
	out := xs[:0]
	// Walk from the end so the newest point stays.
	start := (len(xs) - 1) % 2
	for i := start; i < len(xs); i += 2 {
		out = append(out, xs[i])
	}
	return out
}

// World records the current generation: gen and its node ids in rank
// order, or no ids while a generation is forming. A generation's first
// World with ids marks it on the time axes.
func (b *Board) World(gen uint64, ids []string) {
	b.update(func(s *Status, now time.Time) {
		s.Generation, s.WorldSize, s.Nodes = gen, len(ids), append([]string{}, ids...)
		rank := make(map[string]int, len(ids))
		for i, id := range ids {
			rank[id] = i
			if b.nodes[id] == nil {
				b.nodes[id] = &Node{ID: id, Step: -1}
			}
		}
		for id, n := range b.nodes {
			if n.State == StateLost {
				continue
			}
			state, r := StateSpare, -1
			if len(ids) == 0 {
				state = StateForming
			} else if i, ok := rank[id]; ok {
				state, r = StateTraining, i
			}
			if n.State != state {
				b.seq++
				n.since = b.seq
			}
			n.State, n.Rank = state, r
		}
		if len(ids) > 0 && (len(s.Generations) == 0 || s.Generations[len(s.Generations)-1].Gen != gen) {
			s.Generations = append(s.Generations, GenMark{Gen: gen, Size: len(ids), Step: s.Applied, T: unix(now)})
			if len(s.Generations) > MaxGenerations {
				s.Generations = append(s.Generations[:0], s.Generations[len(s.Generations)-MaxGenerations:]...)
			}
		}
	})
}

// Connected records a node's session opening (again, for a restarted node).
func (b *Board) Connected(id string) {
	b.update(func(s *Status, _ time.Time) {
		b.seq++
		b.nodes[id] = &Node{ID: id, Rank: -1, State: StateJoined, Step: -1, since: b.seq}
	})
}

// Lost records the loss of a node.
func (b *Board) Lost(id string) {
	b.update(func(s *Status, _ time.Time) {
		s.Lost++
		n := b.nodes[id]
		if n == nil {
			n = &Node{ID: id, Step: -1}
			b.nodes[id] = n
		}
		b.seq++
		n.State, n.Rank, n.since = StateLost, -1, b.seq
		b.pruneLost()
	})
}

// pruneLost drops the oldest lost nodes past MaxLostNodes.
func (b *Board) pruneLost() {
	var lost []*Node
	for _, n := range b.nodes {
		if n.State == StateLost {
			lost = append(lost, n)
		}
	}
	if len(lost) <= MaxLostNodes {
		return
	}
	sort.Slice(lost, func(i, j int) bool { return lost[i].since < lost[j].since })
	for _, n := range lost[:len(lost)-MaxLostNodes] {
		delete(b.nodes, n.ID)
	}
}

// Abort records an aborted step.
func (b *Board) Abort() { b.update(func(s *Status, _ time.Time) { s.Aborted++ }) }

// Eval records the metrics of an evaluation after applied steps.
func (b *Board) Eval(applied int, res map[string]float64) {
	b.update(func(s *Status, now time.Time) {
		s.EvalStep, s.Eval = applied, make(map[string]Num, len(res))
		for k, v := range res {
			s.Eval[k] = Num(v)
		}
		e := &s.Evals
		n := len(e.T)
		e.T = append(e.T, unix(now))
		e.Step = append(e.Step, applied)
		for k, v := range res {
			if _, ok := e.Metrics[k]; !ok {
				// A metric first seen now has no value before.
				e.Metrics[k] = nans(n)
			}
			e.Metrics[k] = append(e.Metrics[k], Num(v))
		}
		for k, col := range e.Metrics {
			if len(col) == n {
				e.Metrics[k] = append(col, Num(math.NaN()))
			}
		}
		if len(e.T) > MaxEvals {
			e.T, e.Step = halve(e.T), halve(e.Step)
			for k, col := range e.Metrics {
				e.Metrics[k] = halve(col)
			}
		}
	})
}

func nans(n int) []Num {
	out := make([]Num, n)
	for i := range out {
		out[i] = Num(math.NaN())
	}
	return out
}

// NodeStep records what node id reported with step: its metrics by name
// (see control.Reduced.Metrics; keys ending in _ms are milliseconds, _mb
// mebibytes). The table gains a column for every name some node reports.
func (b *Board) NodeStep(id string, step int, metrics map[string]float64) {
	b.update(func(s *Status, now time.Time) {
		n := b.nodes[id]
		if n == nil {
			b.seq++
			n = &Node{ID: id, Rank: -1, State: StateTraining, since: b.seq}
			b.nodes[id] = n
		}
		n.Step, n.T = step, unix(now)
		n.Metrics = make(map[string]Num, len(metrics))
		for k, v := range metrics {
			n.Metrics[k] = Num(v)
		}
	})
}

// Snapshot returns a deep copy of the status, with the node table in rank
// order (then spares, then lost nodes, newest loss first).
func (b *Board) Snapshot() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.st
	s.Nodes = append([]string{}, b.st.Nodes...)
	if b.st.Eval != nil {
		s.Eval = make(map[string]Num, len(b.st.Eval))
		for k, v := range b.st.Eval {
			s.Eval[k] = v
		}
	}
	h := b.st.History
	s.History = History{T: append([]float64{}, h.T...), Step: append([]int{}, h.Step...), Loss: append([]Num{}, h.Loss...), Rate: append([]Num{}, h.Rate...)}
	e := b.st.Evals
	s.Evals = Evals{T: append([]float64{}, e.T...), Step: append([]int{}, e.Step...), Metrics: make(map[string][]Num, len(e.Metrics))}
	for k, col := range e.Metrics {
		s.Evals.Metrics[k] = append([]Num{}, col...)
	}
	s.Generations = append([]GenMark{}, b.st.Generations...)
	s.NodeTable = make([]Node, 0, len(b.nodes))
	keys := map[string]bool{}
	for _, n := range b.nodes {
		c := *n
		c.Metrics = make(map[string]Num, len(n.Metrics))
		for k, v := range n.Metrics {
			c.Metrics[k] = v
			keys[k] = true
		}
		s.NodeTable = append(s.NodeTable, c)
	}
	sort.Slice(s.NodeTable, func(i, j int) bool { return nodeLess(s.NodeTable[i], s.NodeTable[j]) })
	s.NodeColumns = Columns(keys)
	return s
}

// nodeLess orders the table: ranks of the current generation first, by
// rank; then other live nodes by id; then lost nodes, newest loss first.
func nodeLess(a, b Node) bool {
	la, lb := a.State == StateLost, b.State == StateLost
	switch {
	case la != lb:
		return lb
	case la:
		return a.since > b.since
	case (a.Rank >= 0) != (b.Rank >= 0):
		return a.Rank >= 0
	case a.Rank != b.Rank:
		return a.Rank < b.Rank
	}
	return a.ID < b.ID
}

// knownColumns are the node metrics the table shows first, in this order,
// with these labels: the step's phases, then memory. Any other reported
// metric gets a column after them, labelled from its name.
var knownColumns = []Column{
	{"compute_ms", "compute ms"},
	{"exposed_comm_ms", "exposed comm ms"},
	{"overlapped_comm_ms", "overlapped comm ms"},
	{"comm_ms", "comm busy ms"},
	{"apply_ms", "apply ms"},
	{"rss_mb", "RSS MB"},
	{"optimizer_mb", "optimizer MB"},
}

// Columns returns the table columns for the metric names in keys: known
// ones first in their order, then the rest sorted by name.
func Columns(keys map[string]bool) []Column {
	out := []Column{}
	for _, c := range knownColumns {
		if keys[c.Key] {
			out = append(out, c)
		}
	}
	var rest []string
	for k := range keys {
		if !isKnown(k) {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		out = append(out, Column{Key: k, Label: Label(k)})
	}
	return out
}

func isKnown(k string) bool {
	for _, c := range knownColumns {
		if c.Key == k {
			return true
		}
	}
	return false
}

// Label makes a column label from a metric name: underscores become
// spaces and the unit suffixes _ms and _mb read "ms" and "MB".
func Label(key string) string {
	switch {
	case strings.HasSuffix(key, "_ms"):
		return strings.ReplaceAll(strings.TrimSuffix(key, "_ms"), "_", " ") + " ms"
	case strings.HasSuffix(key, "_mb"):
		return strings.ReplaceAll(strings.TrimSuffix(key, "_mb"), "_", " ") + " MB"
	}
	return strings.ReplaceAll(key, "_", " ")
}
