package agent

// Fuzzing of the node's message handling, as run() does it: expect, then
// handle. Properties: no panic, and a message expect rejects changes no
// state (session, trainer calls, messages sent).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
)

// countStream is the coordinator's end as the node sees it: it counts what
// the node sends.
type countStream struct{ sent []string }

func (s *countStream) Send(m *control.Msg) error   { s.sent = append(s.sent, m.Type); return nil }
func (s *countStream) Recv() (*control.Msg, error) { return nil, context.Canceled }
func (s *countStream) Context() context.Context    { return context.Background() }

// countTrainer is a trainer of 4 parameters that counts its calls, so the
// fuzz test sees any call a rejected message would have caused.
type countTrainer struct{ calls map[string]int }

func (t *countTrainer) call(n string) { t.calls[n]++ }
func (t *countTrainer) Setup(Job) (int, error) {
	t.call("setup")
	return 4, nil
}
func (t *countTrainer) Accumulate(*data.Batch) (float64, int, error) {
	t.call("accumulate")
	return 1, 1, nil
}
func (t *countTrainer) Gradients() ([]float32, error) {
	t.call("gradients")
	return make([]float32, 4), nil
}
func (t *countTrainer) Apply(int, int) error    { t.call("apply"); return nil }
func (t *countTrainer) Discard() error          { t.call("discard"); return nil }
func (t *countTrainer) Digest() ([]byte, error) { t.call("digest"); return []byte{1}, nil }
func (t *countTrainer) WriteState(w io.Writer) error {
	t.call("writestate")
	_, err := w.Write(control.EncodeState(make([]float32, 4), nil, 0))
	return err
}
func (t *countTrainer) ReadState(r io.Reader) error {
	t.call("readstate")
	_, err := io.Copy(io.Discard, r)
	return err
}
func (t *countTrainer) Close() error { return nil }
func (t *countTrainer) Export(dir string) error {
	t.call("export")
	return os.WriteFile(filepath.Join(dir, "model.safetensors"), []byte("x"), 0o644)
}
func (t *countTrainer) Evaluate(*data.Batch) (control.EvalSums, error) {
	t.call("evaluate")
	return control.EvalSums{Count: 1}, nil
}

const (
	phaseFresh  = iota // no job yet
	phaseSetUp         // job received (its file cached), trainer set up, no generation
	phaseInGen         // generation 2 (a ring of one), 5 steps applied
	phaseInStep        // step 5 of generation 2 reduced, commit awaited
	numPhases
)

var fuzzTypes = []string{
	control.TypeJob, control.TypeGen, control.TypePull, control.TypeStep,
	control.TypeCommit, control.TypeAbort, control.TypeEvalReq, control.TypeExport,
	control.TypeHello, control.TypeReady, control.TypeReduced, control.TypeLoaded, control.TypeExported, control.TypeLeave, control.TypeChallenge, "nope",
}

var modelFile = []byte(`{"model_type":"bow"}`)

func fuzzSession(t testing.TB, phase int) (*session, *countStream, *countTrainer) {
	tr := &countTrainer{calls: map[string]int{}}
	key := make(auth.Key, 32)
	a := &Agent{cfg: Config{Key: key, Name: "n0", CacheDir: t.TempDir(), CommitTimeout: time.Minute}, factory: func() (Trainer, error) { return tr, nil },
		log: slog.New(slog.NewTextHandler(discardW{}, nil))}
	srv, err := allreduce.NewServer(key)
	if err != nil {
		t.Fatal(err)
	}
	st := &countStream{}
	h := newHub()
	bs, err := bulk.NewServer(key, h.source, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := &session{a: a, st: st, ringSrv: srv, hub: h, bulkSrv: bs, applied: -1, watch: newRingWatch()}
	t.Cleanup(func() { s.release(nil) })
	if err := s.startMachine(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(modelFile)
	hash := hex.EncodeToString(sum[:])
	// The model file is in the cache, so the job sets the trainer up
	// without a bulk pull from a coordinator.
	if err := os.WriteFile(filepath.Join(a.cfg.CacheDir, hash), modelFile, 0o644); err != nil {
		t.Fatal(err)
	}
	job := fuzzJob()
	if phase >= phaseSetUp {
		if err := s.handle(&control.Msg{Type: control.TypeJob, Job: job}); err != nil {
			t.Fatal(err)
		}
	}
	if phase >= phaseInGen {
		s.applied = 5
		if err := s.handle(&control.Msg{Type: control.TypeGen, Gen: 2, World: &control.World{Generation: 2, Peers: []string{"127.0.0.1:1"}, IDs: []string{"n0"}, Applied: 5}}); err != nil {
			t.Fatal(err)
		}
	}
	if phase >= phaseInStep {
		if err := s.handle(&control.Msg{Type: control.TypeStep, Gen: 2, Step: 5, Count: 3, Batches: []*control.Batch{{Size: 3}}}); err != nil {
			t.Fatal(err)
		}
	}
	return s, st, tr
}

// fuzzJob is a job whose one model file fuzzSession put in the cache.
func fuzzJob() *control.Job {
	sum := sha256.Sum256(modelFile)
	return &control.Job{Files: []control.FileInfo{{Name: "config.json", Size: int64(len(modelFile)), SHA256: hex.EncodeToString(sum[:])}}, TimeoutMS: 5000}
}

type discardW struct{}

func (discardW) Write(b []byte) (int, error) { return len(b), nil }

func (s *session) snapshot(st *countStream, tr *countTrainer) string {
	step, inStep := s.m.InStep()
	mgen, _ := s.m.Generation()
	return fmt.Sprintf("job=%v tr=%v params=%d applied=%d gen=%d ring=%v inStep=%v pending=%d stateWaits=%d sent=%v calls=%v phase=%s held=%d mgen=%d",
		s.job != nil, s.tr != nil, s.params, s.applied, s.gen, s.ring != nil, inStep, step, len(s.stateWaits), st.sent, tr.calls, s.m.Phase(), s.m.Held(), mgen)
}

// fuzzMsg decodes 5 bytes into a message that passes Validate, or nil.
func fuzzMsg(b []byte) *control.Msg {
	pick := func(i int, vals ...int) int { return vals[int(b[i])%len(vals)] }
	m := &control.Msg{V: control.Version, Type: fuzzTypes[int(b[0])%len(fuzzTypes)]}
	m.Gen = uint64(pick(1, 0, 1, 2, 3, int(b[1])))
	m.Step = pick(2, -1, 0, 4, 5, 6, int(b[2])-128)
	m.Req = pick(3, 0, 1, 7)
	f := b[4]
	m.Count = int(f%3) + 1
	m.Digest = f&1 != 0
	sum := sha256.Sum256(modelFile)
	hash := hex.EncodeToString(sum[:])
	switch m.Type {
	case control.TypeJob:
		m.Job = &control.Job{Files: []control.FileInfo{{Name: [...]string{"config.json", "../x", ""}[f%3], Size: int64(len(modelFile)), SHA256: hash}}}
	case control.TypePull:
		// Nothing listens on port 1: a pull that gets through expect
		// fails fast, as a pull from a dead source does.
		m.Pull = &control.Pull{Addr: "127.0.0.1:1", Kind: [...]string{"state", "checkpoint", "x"}[f%3], Step: m.Step}
	case control.TypeExported:
		m.Files = []control.FileInfo{{Name: "model.safetensors", Size: 1, SHA256: hash}}
	case control.TypeGen:
		m.Gen = max(m.Gen, 1)
		m.World = &control.World{Generation: m.Gen, Peers: []string{"127.0.0.1:1"}, IDs: []string{"n0"}, Applied: int(f % 7)}
	case control.TypeStep:
		m.Gen = max(m.Gen, 1)
		m.Batches = []*control.Batch{{Size: 3}}
	case control.TypeCommit:
		m.Gen = max(m.Gen, 1)
	case control.TypeEvalReq:
		m.Batches = []*control.Batch{{Size: 2}}
	case control.TypeHello:
		m.Hello = &control.Hello{ID: "x", Nonce: make([]byte, 32)}
	case control.TypeReady:
		m.Ready = &control.Ready{}
	case control.TypeReduced:
		m.Reduced = &control.Reduced{}
	case control.TypeChallenge:
		m.Nonce, m.Proof = make([]byte, 32), make([]byte, 32)
	}
	if m.Validate() != nil {
		return nil
	}
	return m
}

func fuzzAgentMessages(t testing.TB, phase uint8, data []byte) {
	s, st, tr := fuzzSession(t, int(phase)%numPhases)
	for ; len(data) >= 5; data = data[5:] {
		m := fuzzMsg(data[:5])
		if m == nil {
			continue
		}
		before := s.snapshot(st, tr)
		if err := s.expect(m); err != nil {
			if after := s.snapshot(st, tr); after != before {
				t.Fatalf("phase %d: rejected %s (gen %d step %d: %v) changed state:\nbefore %s\nafter  %s", phase%numPhases, m.Type, m.Gen, m.Step, err, before, after)
			}
			continue
		}
		if err := s.handle(m); err != nil {
			return // fatal for the node: run() would leave here
		}
	}
}

// FuzzAgentMessages: go test -run '^$' -fuzz FuzzAgentMessages ./node/agent/
func FuzzAgentMessages(f *testing.F) {
	for p := range uint8(numPhases) {
		f.Add(p, []byte{6, 2, 3, 0, 0, 5, 2, 3, 0, 0})                // commit, step
		f.Add(p, []byte{2, 2, 3, 0, 3, 7, 2, 0, 2, 0, 6, 2, 0, 0, 0}) // pull, export, eval
	}
	f.Fuzz(func(t *testing.T, phase uint8, data []byte) { fuzzAgentMessages(t, phase, data) })
}

// TestAgentRandomMessages is the bounded CI run of the fuzz target.
func TestAgentRandomMessages(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	for i := range 300 {
		data := make([]byte, 5*30)
		for j := range data {
			data[j] = byte(rng.UintN(256))
		}
		fuzzAgentMessages(t, uint8(i), data)
	}
}

// TestAgentDropsOutOfPhase: a commit with no step pending, state before
// setup, or a stale generation is dropped by expect with a reason, and the
// trainer is never called.
func TestAgentDropsOutOfPhase(t *testing.T) {
	s, st, tr := fuzzSession(t, phaseFresh)
	for _, m := range []*control.Msg{
		{Type: control.TypeCommit, Gen: 1, Step: 0, Count: 1},
		{Type: control.TypeExport, Gen: 1},
		{Type: control.TypePull, Gen: 1, Pull: &control.Pull{Addr: "127.0.0.1:1", Kind: "state", Step: 1}},
		{Type: control.TypeEvalReq, Gen: 1},
	} {
		if err := s.expect(m); err == nil || !strings.Contains(err.Error(), "not set up") {
			t.Errorf("%s before setup: got %v", m.Type, err)
		}
	}
	s, st, tr = fuzzSession(t, phaseInGen)
	before := s.snapshot(st, tr)
	for _, m := range []*control.Msg{
		{Type: control.TypeCommit, Gen: 2, Step: 5, Count: 1},
		{Type: control.TypeGen, Gen: 2, World: &control.World{Generation: 2, Peers: []string{"a:1"}, IDs: []string{"a"}}},
		{Type: control.TypeEvalReq, Gen: 1},
	} {
		if err := s.expect(m); err == nil {
			t.Errorf("%s gen %d accepted in generation 2 with no step pending", m.Type, m.Gen)
		}
	}
	if s.snapshot(st, tr) != before {
		t.Error("rejected messages changed state")
	}
}

func TestExitCode(t *testing.T) {
	for err, want := range map[error]int{
		nil:              ExitOK,
		context.Canceled: ExitFailure,
		fmt.Errorf("wrapped: %w", &PanicError{Value: "x"}): ExitPanic,
	} {
		if got := ExitCode(err); got != want {
			t.Errorf("ExitCode(%v) = %d, want %d", err, got, want)
		}
	}
}

// TestCommitTimeoutOutlastsCoordinator: a node waits for a commit at least
// the coordinator's step deadline (from the job) plus a margin, so that the
// coordinator aborts a step with a silent rank before any survivor gives
// up (issue 11, defect 14: 120 s here against 150 s there).
func TestCommitTimeoutOutlastsCoordinator(t *testing.T) {
	s, _, _ := fuzzSession(t, phaseFresh)
	s.a.cfg.CommitTimeout = 2 * time.Minute
	if got := s.commitTimeout(); got != 2*time.Minute {
		t.Errorf("before the job: %s, want the configured 2m", got)
	}
	s.job = &control.Job{StepTimeoutMS: (150 * time.Second).Milliseconds()}
	if got := s.commitTimeout(); got != 180*time.Second {
		t.Errorf("with a 150s step deadline: %s, want 3m0s", got)
	}
	s.a.cfg.CommitTimeout = 10 * time.Minute
	if got := s.commitTimeout(); got != 10*time.Minute {
		t.Errorf("a longer configured wait is kept: got %s", got)
	}
}
