package coordinator_test

// Cluster tests: the coordinator and gonode binaries, built once, run as
// real processes on loopback with real memberlist and gRPC. Every process
// gets a deadline (exec.CommandContext) so that no test can hang.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/model/safetensors"
)

var bins struct {
	once       sync.Once
	dir        string
	coord, nod string
	err        error
}

func build(t *testing.T) (coord, node string) {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "ringtune-bin-")
		if bins.err != nil {
			return
		}
		bins.coord = filepath.Join(bins.dir, "coordinator")
		bins.nod = filepath.Join(bins.dir, "gonode")
		for pkg, out := range map[string]string{"../cmd/coordinator": bins.coord, "../internal/gotrainer/gonode": bins.nod} {
			cmd := exec.Command("go", "build", "-o", out, pkg)
			if b, err := cmd.CombinedOutput(); err != nil {
				bins.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
				return
			}
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return bins.coord, bins.nod
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		_ = os.RemoveAll(bins.dir)
	}
	// The in-process parts (gRPC clients, logic) must not leak goroutines.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// fixture is a run directory: key, model dir, data subset and config.
type fixture struct {
	dir  string
	key  string
	yaml string
}

func dataFile(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join("..", ".data", name)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%s missing: run scripts/fetch-data.sh", p)
	}
	return p
}

func headLines(t *testing.T, src, dst string, n int) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if err := os.WriteFile(dst, []byte(strings.Join(lines[:n], "")), 0o644); err != nil {
		t.Fatal(err)
	}
}

// newFixture writes a run directory; overrides are YAML lines appended per
// section via the template's placeholders.
func newFixture(t *testing.T, label string, minNodes, maxNodes int, extraTrain string) *fixture {
	t.Helper()
	d := t.TempDir()
	f := &fixture{dir: d, key: filepath.Join(d, "cluster.key")}
	if _, err := auth.WriteKeyFile(f.key); err != nil {
		t.Fatal(err)
	}
	tok := dataFile(t, "tokenizers/bert-base-uncased/tokenizer.json")
	headLines(t, dataFile(t, "sentiment/train.jsonl"), filepath.Join(d, "train.jsonl"), 96)
	headLines(t, dataFile(t, "sentiment/eval.jsonl"), filepath.Join(d, "eval.jsonl"), 30)
	md := filepath.Join(d, "model")
	if err := os.MkdirAll(md, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(md, "config.json"), []byte(`{"model_type":"bow","vocab_size":30522}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tb, err := os.ReadFile(tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(md, "tokenizer.json"), tb, 0o644); err != nil {
		t.Fatal(err)
	}
	f.yaml = fmt.Sprintf(`cluster:
  bind: 127.0.0.1:0
  grpc: 127.0.0.1:0
  key_file: cluster.key
  min_nodes: %d
  max_nodes: %d
  settle: 300ms
  label: %s
model:
  path: model
  task: classification
  num_labels: 2
  init: random
data:
  train_file: train.jsonl
  eval_file: eval.jsonl
  max_length: 32
  tokenizer: model/tokenizer.json
train:
  epochs: 2
  global_batch: 8
  micro_batch: 3
  optimizer: sgd
  momentum: 0.9
  lr: 0.5
  schedule: linear
  warmup_ratio: 0
  max_grad_norm: 1.0
  digest_every: 1
%sallreduce:
  timeout: 5s
checkpoint:
  dir: ckpt
  every: 10
output:
  dir: out
`, minNodes, maxNodes, label, extraTrain)
	f.write(t, f.yaml)
	return f
}

func (f *fixture) write(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(f.dir, "cluster.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// proc is a running process with captured output.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func start(t *testing.T, ctx context.Context, dir string, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{done: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, name, args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("output of %s %v:\n%s", filepath.Base(name), args, p.text())
		}
	})
	return p
}

func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("process %v did not finish within %s (hang)", p.cmd.Args, d)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("process %v: %v", p.cmd.Args, p.err)
	}
	return 0
}

// waitFor polls p's output for re (a deadline against hangs, not a timing
// assertion) and returns the first submatch.
func (p *proc) waitFor(t *testing.T, re string, d time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if m := rx.FindStringSubmatch(p.text()); m != nil {
			return m
		}
		select {
		case <-p.done:
			if m := rx.FindStringSubmatch(p.text()); m != nil {
				return m
			}
			t.Fatalf("%v exited before printing %q", p.cmd.Args, re)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%v did not print %q within %s", p.cmd.Args, re, d)
	return nil
}

type cluster struct {
	coord  *proc
	nodes  []*proc
	gossip string
	grpc   string
}

func runCluster(t *testing.T, ctx context.Context, f *fixture, n int, nodeEnv []string, coordArgs ...string) *cluster {
	t.Helper()
	coordBin, nodeBin := build(t)
	c := &cluster{}
	c.coord = start(t, ctx, f.dir, nil, coordBin, append([]string{"--config", "cluster.yaml"}, coordArgs...)...)
	m := c.coord.waitFor(t, `gossip=(\S+) grpc=(\S+)`, 20*time.Second)
	c.gossip, c.grpc = m[1], m[2]
	label := regexp.MustCompile(`label: (\S+)`).FindStringSubmatch(f.yaml)[1]
	for i := range n {
		name := fmt.Sprintf("%s-n%d", label, i)
		c.nodes = append(c.nodes, start(t, ctx, f.dir, nodeEnv, nodeBin, "join", "--coordinator", c.gossip, "--key-file", f.key,
			"--bind", "127.0.0.1:0", "--name", name, "--label", label, "--cache-dir", filepath.Join(f.dir, "cache-"+name), "--join-timeout", "10s"))
	}
	return c
}

func readModel(t *testing.T, dir string) (w, b []float32) {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if w, err = f.Float32s("weight"); err != nil {
		t.Fatal(err)
	}
	if b, err = f.Float32s("bias"); err != nil {
		t.Fatal(err)
	}
	return w, b
}

func TestThreeNodesEqualOneNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	results := map[int][]float32{}
	for _, n := range []int{3, 1} {
		f := newFixture(t, fmt.Sprintf("eq%d-%d", n, os.Getpid()), n, n, "")
		c := runCluster(t, ctx, f, n, nil)
		if code := c.coord.wait(t, 90*time.Second); code != 0 {
			t.Fatalf("%d-node run: coordinator exit %d", n, code)
		}
		for _, p := range c.nodes {
			if code := p.wait(t, 10*time.Second); code != 0 {
				t.Fatalf("node exit %d", code)
			}
		}
		out := c.coord.text()
		if !strings.Contains(out, fmt.Sprintf("generation formed\" gen=1 size=%d", n)) {
			t.Fatalf("%d-node run did not form a world of %d", n, n)
		}
		if n > 1 && !strings.Contains(out, "replicas identical\" applied=24") {
			t.Fatalf("no digest comparison after the last step in the %d-node run", n)
		}
		w, b := readModel(t, filepath.Join(f.dir, "out"))
		results[n] = append(w, b...)
		for _, name := range []string{"config.json", "tokenizer.json"} {
			if _, err := os.Stat(filepath.Join(f.dir, "out", name)); err != nil {
				t.Errorf("export lacks %s: %v", name, err)
			}
		}
	}
	a, b := results[3], results[1]
	if len(a) != len(b) {
		t.Fatalf("parameter counts differ: %d vs %d", len(a), len(b))
	}
	var diff, norm, moved float64
	for i := range a {
		diff = math.Max(diff, math.Abs(float64(a[i]-b[i])))
		norm = math.Max(norm, math.Abs(float64(b[i])))
	}
	// The run must have trained: the bias starts at 0.
	for _, x := range b[len(b)-2:] {
		moved += math.Abs(float64(x))
	}
	if moved == 0 {
		t.Fatal("bias is still zero: nothing was trained")
	}
	if diff > 1e-5*norm {
		t.Fatalf("3-node weights differ from 1-node weights by %g (max |w| %g), want <= 1e-5 relative", diff, norm)
	}
}

func TestKillNodeMidRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("kill-%d", os.Getpid()), 3, 3, "")
	c := runCluster(t, ctx, f, 3, []string{"GONODE_STEP_DELAY=15ms"})
	c.coord.waitFor(t, `replicas identical" applied=4 `, 60*time.Second)
	victim := c.nodes[1]
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := c.coord.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("coordinator exit %d after a node was killed", code)
	}
	out := c.coord.text()
	for _, want := range []string{
		`step aborted`,
		`generation formed" gen=2 size=2`,
		`epoch complete" epoch=0 committed=96 missing=0 samples=96`,
		`epoch complete" epoch=1 committed=96 missing=0 samples=96`,
		`replicas identical" applied=24`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator log lacks %q", want)
		}
	}
	for i, p := range c.nodes {
		if i == 1 {
			continue
		}
		if code := p.wait(t, 10*time.Second); code != 0 {
			t.Errorf("surviving node %d exit %d", i, code)
		}
	}
	if _, err := os.Stat(filepath.Join(f.dir, "out", "model.safetensors")); err != nil {
		t.Fatalf("no model after the run: %v", err)
	}
}

func TestWrongKeyCannotJoin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("key-%d", os.Getpid()), 1, 1, "")
	coordBin, nodeBin := build(t)
	coord := start(t, ctx, f.dir, nil, coordBin, "--config", "cluster.yaml")
	m := coord.waitFor(t, `gossip=(\S+) grpc=(\S+)`, 20*time.Second)
	bad := filepath.Join(t.TempDir(), "other.key")
	badKey, err := auth.WriteKeyFile(bad)
	if err != nil {
		t.Fatal(err)
	}
	// Gossip: the node cannot join, and says what to check.
	node := start(t, ctx, f.dir, nil, nodeBin, "join", "--coordinator", m[1], "--key-file", bad, "--bind", "127.0.0.1:0",
		"--name", "intruder", "--label", regexp.MustCompile(`label: (\S+)`).FindStringSubmatch(f.yaml)[1], "--join-timeout", "2s", "--cache-dir", t.TempDir())
	if code := node.wait(t, 30*time.Second); code == 0 {
		t.Fatal("a node with the wrong key joined")
	}
	if !strings.Contains(node.text(), "key file matches") {
		t.Errorf("node error does not point at the key: %s", node.text())
	}
	// gRPC: a session opened with the wrong key is refused.
	cc, err := control.Dial(m[2], badKey)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	st, err := control.OpenSession(sctx, cc)
	if err == nil {
		_ = st.Send(&control.Msg{V: control.Version, Type: control.TypeHello, Hello: &control.Hello{ID: "intruder", Proto: control.Version}})
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("session with the wrong key: got %v, want Unauthenticated", err)
	}
	if strings.Contains(coord.text(), "node connected") {
		t.Fatal("coordinator accepted a node with the wrong key")
	}
}

func TestBadInput(t *testing.T) {
	coordBin, _ := build(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		name string
		edit func(f *fixture, yaml string) string
		want []string
	}{
		{"malformed yaml", func(_ *fixture, y string) string { return y + "train: [\n" }, []string{"cluster.yaml"}},
		{"unknown key", func(_ *fixture, y string) string { return strings.Replace(y, "  epochs: 2", "  epochz: 2", 1) }, []string{"epochz"}},
		{"missing model dir", func(_ *fixture, y string) string { return strings.Replace(y, "path: model", "path: nomodel", 1) }, []string{"model.path", "nomodel"}},
		{"row without label", func(f *fixture, y string) string {
			appendLine(t, filepath.Join(f.dir, "train.jsonl"), `{"text":"no label here"}`)
			return y
		}, []string{"data.train_file", "train.jsonl:97", "missing label"}},
		{"label out of range", func(f *fixture, y string) string {
			appendLine(t, filepath.Join(f.dir, "train.jsonl"), `{"text":"bad label","label":7}`)
			return y
		}, []string{"train.jsonl:97", "out of range"}},
		{"min above max", func(_ *fixture, y string) string { return strings.Replace(y, "min_nodes: 1", "min_nodes: 4", 1) }, []string{"cluster.max_nodes", "cluster.min_nodes"}},
		{"port in use", func(_ *fixture, y string) string {
			return strings.Replace(y, "grpc: 127.0.0.1:0", "grpc: "+busy.Addr().String(), 1)
		}, []string{"cluster.grpc", busy.Addr().String()}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			f := newFixture(t, "bad", 1, 1, "")
			f.write(t, tc.edit(f, f.yaml))
			p := start(t, ctx, f.dir, nil, coordBin, "--config", "cluster.yaml")
			if code := p.wait(t, 25*time.Second); code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, p.text())
			}
			for _, w := range tc.want {
				if !strings.Contains(p.text(), w) {
					t.Errorf("error does not mention %q:\n%s", w, p.text())
				}
			}
		})
	}
}

func appendLine(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, line)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestResumeFromCheckpoint kills the coordinator after a checkpoint and
// restarts it with --resume and a fresh node: the result equals an
// uninterrupted run.
func TestResumeFromCheckpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("res-%d", os.Getpid()), 1, 1, "")
	c := runCluster(t, ctx, f, 1, nil)
	if code := c.coord.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("uninterrupted run: exit %d", code)
	}
	c.nodes[0].wait(t, 10*time.Second)
	wantW, wantB := readModel(t, filepath.Join(f.dir, "out"))
	if err := os.RemoveAll(filepath.Join(f.dir, "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(f.dir, "ckpt")); err != nil {
		t.Fatal(err)
	}

	c = runCluster(t, ctx, f, 1, []string{"GONODE_STEP_DELAY=20ms"})
	c.coord.waitFor(t, `checkpoint written" path=\S+ applied=10`, 60*time.Second)
	_ = c.coord.cmd.Process.Signal(syscall.SIGKILL)
	c.coord.wait(t, 10*time.Second)
	if code := c.nodes[0].wait(t, 30*time.Second); code == 0 {
		t.Fatal("node exited 0 after losing its coordinator")
	}

	c = runCluster(t, ctx, f, 1, nil, "--resume")
	if code := c.coord.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("resumed run: exit %d", code)
	}
	if !strings.Contains(c.coord.text(), `msg=resuming checkpoint=ckpt/step-000000010.ckpt applied=10`) {
		t.Fatal("the coordinator did not resume")
	}
	gotW, gotB := readModel(t, filepath.Join(f.dir, "out"))
	got, want := append(gotW, gotB...), append(wantW, wantB...)
	for i := range want {
		if d := math.Abs(float64(got[i] - want[i])); d > 1e-6 {
			t.Fatalf("resumed run differs from the uninterrupted one at parameter %d by %g", i, d)
		}
	}
}
