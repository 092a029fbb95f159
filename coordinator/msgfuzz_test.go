package coordinator

// Fuzzing of the coordinator's message handling: random message kinds,
// phases, request ids, generations, steps and senders go through the same
// handler the event loop calls. Properties: no panic, and a message the
// handler rejects changes no state (no session, round, request, ledger or
// outgoing queue moves).

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/control"
)

var fuzzTypes = []string{
	control.TypeHello, control.TypeAuth, control.TypeReady, control.TypeReduced, control.TypeFailed,
	control.TypeDigest, control.TypeEval, control.TypeLoaded, control.TypeExported, control.TypeLeave,
	control.TypeChallenge, control.TypeJob, control.TypeGen, control.TypeStep, control.TypeCommit, control.TypeAbort,
	control.TypePull, control.TypeEvalReq, control.TypeExport, control.TypeStop, "nope",
}

// Phases the fuzzed coordinator is put in before the messages arrive.
const (
	phaseWaiting = iota // sessions open, no generation
	phaseForming        // generation 2 sent, ready answers awaited
	phaseStep           // step 5 of generation 2 in flight
	phaseEval           // evaluation request in flight
	phasePull           // the world asked to pull the committed state
	phaseExport         // export requested from n0
	numPhases
)

// fuzzCoordinator builds a coordinator in phase: sessions n0, n1, n2 (the
// world of generation 2 outside phaseWaiting) and spare x, 5 committed
// steps, request id 7, and one model file on disk.
func fuzzCoordinator(t testing.TB, phase int) (*Coordinator, []*session, string) {
	dir := t.TempDir()
	b := []byte(`{"model_type":"bow"}`)
	p := filepath.Join(dir, "config.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	hash := hex.EncodeToString(sum[:])
	cfg := config.Default()
	c := &Coordinator{
		cfg: cfg, log: slog.New(slog.NewTextHandler(discard{}, nil)), job: &control.Job{},
		paths: map[string]string{hash: p}, sessions: map[string]*session{}, digests: map[int]map[string]string{},
		events: make(chan event, 16), applied: 5, req: 7,
	}
	var ss []*session
	for _, id := range []string{"n0", "n1", "n2", "x"} {
		s := &session{id: id, ring: id + ":1", out: make(chan *control.Msg, 1<<16), cancel: func() {}, rank: -1, applied: 5}
		if phase != phaseWaiting || id == "x" {
			s.ready = true
		}
		c.sessions[id] = s
		ss = append(ss, s)
	}
	if phase != phaseWaiting {
		c.gen = 2
		c.world = ss[:3]
		for i, s := range c.world {
			s.rank = i
		}
	}
	ids := c.worldIDs()
	switch phase {
	case phaseForming:
		c.round = NewReadyRound(2, ids)
	case phaseStep:
		c.round = NewRound(2, 5, ids)
		c.reduced = map[string]*control.Reduced{}
	case phaseEval:
		c.answers = map[string]*control.Msg{}
	case phasePull:
		c.loaded = map[string]*control.Msg{}
		c.pulling, c.pullReq = map[string]bool{"n1": true, "n2": true}, c.req
	case phaseExport:
		c.exportFrom = ss[0]
	}
	return c, ss, hash
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

// snapshot renders every piece of state a message may change.
func (c *Coordinator) snapshot() string {
	var b strings.Builder
	fmt.Fprintf(&b, "gen=%d applied=%d req=%d fatal=%v changed=%v exported=%v\n", c.gen, c.applied, c.req, c.fatal, c.changed, c.exported != nil)
	if r := c.round; r != nil {
		fmt.Fprintf(&b, "round %d %d/%d ok=%v fail=%v\n", r.Kind, r.Gen, r.Step, r.ok, r.fail)
	}
	fmt.Fprintf(&b, "reduced=%v digests=%v\n", len(c.reduced), c.digests)
	ans := slices.Sorted(func(yield func(string) bool) {
		for k := range c.answers {
			if !yield(k) {
				return
			}
		}
	})
	fmt.Fprintf(&b, "answers=%v\n", ans)
	var loaded []string
	for k, v := range c.loaded {
		loaded = append(loaded, fmt.Sprintf("%s:%d:%s", k, v.Step, v.Error))
	}
	sort.Strings(loaded)
	fmt.Fprintf(&b, "loaded=%v\n", loaded)
	ids := make([]string, 0, len(c.sessions))
	for id := range c.sessions {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		s := c.sessions[id]
		fmt.Fprintf(&b, "%s ready=%v applied=%d gone=%v rank=%d out=%d\n", s.id, s.ready, s.applied, s.gone, s.rank, len(s.out))
	}
	return b.String()
}

// fuzzMsg decodes 6 bytes into a message that passes Validate (as every
// message the codec hands over does), or nil.
func fuzzMsg(b []byte, hash string, req int) *control.Msg {
	pick := func(i int, vals ...int) int { return vals[int(b[i])%len(vals)] }
	m := &control.Msg{V: control.Version, Type: fuzzTypes[int(b[1])%len(fuzzTypes)]}
	m.Gen = uint64(pick(2, 0, 1, 2, 3, int(b[2])))
	m.Step = pick(3, -1, 0, 4, 5, 6, int(b[3])-128)
	m.Req = pick(4, 0, req-1, req, req+1)
	f := b[5]
	m.Count = int(f % 3)
	if f&1 != 0 {
		m.Error = "boom"
	}
	switch m.Type {
	case control.TypeHello:
		m.Hello = &control.Hello{ID: "n0", Nonce: make([]byte, 32), Proto: control.Version}
	case control.TypeAuth:
		m.Proof = make([]byte, 32)
	case control.TypeChallenge:
		m.Nonce, m.Proof = make([]byte, 32), make([]byte, 32)
	case control.TypeReady:
		m.Ready = &control.Ready{Params: 10, Applied: int(f % 8)}
	case control.TypeReduced:
		m.Reduced = &control.Reduced{LossSum: 1, Count: 3, Samples: 3}
	case control.TypeDigest:
		m.Sum = [...]string{"aa", "bb", strings.Repeat("c", 64), "d"}[f%4]
	case control.TypePull:
		m.Pull = &control.Pull{Addr: "n1:1", Kind: [...]string{"state", "checkpoint", "x"}[f%3], Step: m.Step}
	case control.TypeExported:
		m.Files = [][]control.FileInfo{nil, {{Name: "model.safetensors", Size: 3, SHA256: hash}}, {{Name: "../x"}}}[f%3]
	case control.TypeEval:
		m.Eval = &control.EvalSums{LossSum: 1, Count: 2, Correct: 1}
	case control.TypeJob:
		m.Job = &control.Job{}
	case control.TypeGen:
		m.Gen = max(m.Gen, 1)
		m.World = &control.World{Generation: m.Gen, Peers: []string{"a:1"}, IDs: []string{"a"}}
	case control.TypeStep, control.TypeCommit:
		m.Gen, m.Count = max(m.Gen, 1), max(m.Count, 1)
	}
	if m.Validate() != nil {
		return nil
	}
	return m
}

// fuzzCoordinatorMessages runs the messages encoded in data (7 bytes each:
// sender, then fuzzMsg's 6) against a coordinator in phase.
func fuzzCoordinatorMessages(t testing.TB, phase uint8, data []byte) {
	c, ss, hash := fuzzCoordinator(t, int(phase)%numPhases)
	for len(data) >= 7 {
		b := data[:7]
		data = data[7:]
		s := ss[int(b[0])%len(ss)]
		m := fuzzMsg(b[1:], hash, c.req)
		if m == nil {
			continue
		}
		if c.sessions[s.id] != s || s.gone {
			c.handle(event{s: s, m: m}) // dropped unread; must not panic
			continue
		}
		before := c.snapshot()
		fatal := c.fatal
		err := c.onMsg(s, m)
		if err != nil && fatal == c.fatal {
			if after := c.snapshot(); after != before {
				t.Fatalf("phase %d: rejected %s from %s (gen %d step %d req %d: %v) changed state:\nbefore:\n%s\nafter:\n%s", phase%numPhases, m.Type, s.id, m.Gen, m.Step, m.Req, err, before, after)
			}
		}
		if c.fatal != nil {
			return // the run is over (replicas diverged): nothing more is read
		}
	}
}

// FuzzCoordinatorMessages: go test -run '^$' -fuzz FuzzCoordinatorMessages ./coordinator/
func FuzzCoordinatorMessages(f *testing.F) {
	// Seeds: issue 12's unsolicited evalres in every phase, a whole step,
	// an export, a state transfer.
	for p := range uint8(numPhases) {
		f.Add(p, []byte{1, 8, 2, 3, 2, 0, 0})
	}
	f.Add(uint8(phaseStep), []byte{0, 4, 2, 3, 0, 0, 0, 1, 4, 2, 3, 0, 0, 0, 2, 5, 2, 3, 0, 0, 1})
	f.Add(uint8(phaseExport), []byte{0, 9, 2, 0, 2, 0, 0, 0, 10, 2, 0, 2, 0, 0})
	f.Add(uint8(phasePull), []byte{1, 7, 2, 0, 2, 0, 6})
	f.Add(uint8(phaseWaiting), []byte{0, 2, 0, 0, 0, 0, 1, 0, 3, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, phase uint8, data []byte) { fuzzCoordinatorMessages(t, phase, data) })
}

// TestCoordinatorRandomMessages is the bounded CI run of the fuzz target:
// 600 random sequences of 40 messages each over all phases.
func TestCoordinatorRandomMessages(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, uint64(time.Now().UnixNano())))
	for i := range 600 {
		data := make([]byte, 7*40)
		for j := range data {
			data[j] = byte(rng.UintN(256))
		}
		fuzzCoordinatorMessages(t, uint8(i), data)
	}
}

// TestUnsolicitedEvalResult is issue 12's crash: one evalres from an
// authenticated node with no evaluation in flight.
func TestUnsolicitedEvalResult(t *testing.T) {
	for p := range numPhases {
		if p == phaseEval {
			continue
		}
		c, ss, _ := fuzzCoordinator(t, p)
		before := c.snapshot()
		err := c.onMsg(ss[0], &control.Msg{V: control.Version, Type: control.TypeEval, Gen: c.gen, Req: c.req, Eval: &control.EvalSums{}})
		if err == nil || !strings.Contains(err.Error(), "no evaluation in flight") {
			t.Errorf("phase %d: got %v, want a refusal", p, err)
		}
		if c.snapshot() != before {
			t.Errorf("phase %d: a refused evalres changed state", p)
		}
	}
}
