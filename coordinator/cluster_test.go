package coordinator_test

// Cluster tests: the coordinator and gonode binaries, built once, run as
// real processes on loopback with real memberlist and gRPC. Every process
// gets a deadline (exec.CommandContext) so that no test can hang.

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/internal/clustertest"
	"github.com/ringtune/ringtune/model/safetensors"
)

// build compiles the coordinator and the pure-Go test node once.
func build(t *testing.T) (coord, node string) {
	t.Helper()
	b := clustertest.Build(t, "./cmd/coordinator", "./internal/gotrainer/gonode")
	return b[0], b[1]
}

func TestMain(m *testing.M) {
	code := m.Run()
	clustertest.Cleanup()
	// The in-process parts (gRPC clients, logic) must not leak goroutines.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// fixtureModelConfig is a valid tiny BERT config.json, which the
// coordinator checks as the real nodes would load it; the pure-Go test node
// reads only its vocab_size and trains a bag-of-words model on it.
const fixtureModelConfig = `{"model_type":"bert","vocab_size":30522,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"max_position_embeddings":64}`

// newFixture writes a run directory of the pure-Go bag-of-words model;
// extraTrain adds lines to the train section.
func newFixture(t *testing.T, label string, minNodes, maxNodes int, extraTrain string) *clustertest.Fixture {
	t.Helper()
	return bowFixture(t, label, minNodes, maxNodes, `  optimizer: sgd
  momentum: 0.9
  lr: 0.5
  max_grad_norm: 1.0
`+extraTrain)
}

// bowFixture is the run directory of the bag-of-words model, 96 training
// and 30 eval lines, 2 epochs of global batch 8, with optim (optimizer,
// learning rate, clipping) added to the train section.
func bowFixture(t *testing.T, label string, minNodes, maxNodes int, optim string) *clustertest.Fixture {
	t.Helper()
	return clustertest.NewFixture(t, clustertest.Options{
		Label: label, MinNodes: minNodes, MaxNodes: maxNodes,
		ModelConfig: fixtureModelConfig,
		TrainLines:  96, EvalLines: 30,
		Model: "  task: classification\n  num_labels: 2\n  init: random\n",
		Train: `  epochs: 2
  global_batch: 8
  micro_batch: 3
  schedule: linear
  warmup_ratio: 0
  digest_every: 1
` + optim,
	})
}

func runCluster(t *testing.T, ctx context.Context, f *clustertest.Fixture, n int, nodeEnv []string, coordArgs ...string) *clustertest.Cluster {
	t.Helper()
	coordBin, nodeBin := build(t)
	return clustertest.RunCluster(t, ctx, f, coordBin, nodeBin, n, nodeEnv, coordArgs...)
}

// uninterrupted runs f to the end on n nodes (coordinator flags args) and
// returns the exported weights and bias, the reference a disturbed run of
// the same fixture must reproduce; it then clears the run's out/ and ckpt/
// for that run.
func uninterrupted(t *testing.T, ctx context.Context, f *clustertest.Fixture, n int, args ...string) (w, b []float32) {
	t.Helper()
	c := runCluster(t, ctx, f, n, nil, args...)
	if code := c.Coord.Wait(t, 90*time.Second); code != 0 {
		t.Fatalf("uninterrupted run: exit %d", code)
	}
	for _, p := range c.Nodes {
		p.Wait(t, 10*time.Second)
	}
	w, b = readModel(t, filepath.Join(f.Dir, "out"))
	for _, d := range []string{"out", "ckpt"} {
		if err := os.RemoveAll(filepath.Join(f.Dir, d)); err != nil {
			t.Fatal(err)
		}
	}
	return w, b
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
		if code := c.Coord.Wait(t, 90*time.Second); code != 0 {
			t.Fatalf("%d-node run: coordinator exit %d", n, code)
		}
		for _, p := range c.Nodes {
			if code := p.Wait(t, 10*time.Second); code != 0 {
				t.Fatalf("node exit %d", code)
			}
		}
		out := c.Coord.Text()
		if !strings.Contains(out, fmt.Sprintf("generation formed\" gen=1 size=%d", n)) {
			t.Fatalf("%d-node run did not form a world of %d", n, n)
		}
		if n > 1 && !strings.Contains(out, "replicas identical\" applied=24") {
			t.Fatalf("no digest comparison after the last step in the %d-node run", n)
		}
		w, b := readModel(t, filepath.Join(f.Dir, "out"))
		results[n] = append(w, b...)
		for _, name := range []string{"config.json", "tokenizer.json"} {
			if _, err := os.Stat(filepath.Join(f.Dir, "out", name)); err != nil {
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
	c.Coord.WaitFor(t, `replicas identical" applied=4 `, 60*time.Second)
	victim := c.Nodes[1]
	if err := victim.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := c.Coord.Wait(t, 90*time.Second); code != 0 {
		t.Fatalf("coordinator exit %d after a node was killed", code)
	}
	out := c.Coord.Text()
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
	for i, p := range c.Nodes {
		if i == 1 {
			continue
		}
		if code := p.Wait(t, 10*time.Second); code != 0 {
			t.Errorf("surviving node %d exit %d", i, code)
		}
	}
	if _, err := os.Stat(filepath.Join(f.Dir, "out", "model.safetensors")); err != nil {
		t.Fatalf("no model after the run: %v", err)
	}
}

func TestWrongKeyCannotJoin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("key-%d", os.Getpid()), 1, 1, "")
	coordBin, nodeBin := build(t)
	coord := clustertest.Start(t, ctx, f.Dir, nil, coordBin, "--config", "cluster.yaml")
	m := coord.WaitFor(t, `gossip=(\S+) grpc=(\S+)`, 20*time.Second)
	bad := filepath.Join(t.TempDir(), "other.key")
	badKey, err := auth.WriteKeyFile(bad)
	if err != nil {
		t.Fatal(err)
	}
	// Gossip: the node cannot join, and says what to check.
	node := clustertest.Start(t, ctx, f.Dir, nil, nodeBin, "join", "--coordinator", m[1], "--key-file", bad, "--bind", "127.0.0.1:0",
		"--name", "intruder", "--label", regexp.MustCompile(`label: (\S+)`).FindStringSubmatch(f.YAML)[1], "--join-timeout", "2s", "--cache-dir", t.TempDir())
	if code := node.Wait(t, 30*time.Second); code == 0 {
		t.Fatal("a node with the wrong key joined")
	}
	if !strings.Contains(node.Text(), "key file matches") {
		t.Errorf("node error does not point at the key: %s", node.Text())
	}
	// gRPC: a session opened with the wrong key is refused: its TLS
	// certificate, derived from that key, is not from the cluster's CA.
	badTLS, err := auth.DerivedTLS(badKey)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := control.Dial(m[2], badKey, badTLS.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	st, err := control.OpenSession(sctx, cc)
	if err == nil {
		_ = st.Send(&control.Msg{V: control.Version, Type: control.TypeHello, Hello: &control.Hello{ID: "intruder", Proto: control.Version, Nonce: make([]byte, auth.NonceSize)}})
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("session with the wrong key: got %v, want Unavailable (TLS handshake refused)", err)
	}
	if strings.Contains(coord.Text(), "node connected") {
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
		edit func(f *clustertest.Fixture, yaml string) string
		want []string
	}{
		{"malformed yaml", func(_ *clustertest.Fixture, y string) string { return y + "train: [\n" }, []string{"cluster.yaml"}},
		{"unknown key", func(_ *clustertest.Fixture, y string) string {
			return strings.Replace(y, "  epochs: 2", "  epochz: 2", 1)
		}, []string{"epochz"}},
		{"missing model dir", func(_ *clustertest.Fixture, y string) string {
			return strings.Replace(y, "path: model", "path: nomodel", 1)
		}, []string{"model.path", "nomodel"}},
		{"row without label", func(f *clustertest.Fixture, y string) string {
			appendLine(t, filepath.Join(f.Dir, "train.jsonl"), `{"text":"no label here"}`)
			return y
		}, []string{"data.train_file", "train.jsonl:97", "missing label"}},
		{"label out of range", func(f *clustertest.Fixture, y string) string {
			appendLine(t, filepath.Join(f.Dir, "train.jsonl"), `{"text":"bad label","label":7}`)
			return y
		}, []string{"train.jsonl:97", "out of range"}},
		{"min above max", func(_ *clustertest.Fixture, y string) string {
			return strings.Replace(y, "min_nodes: 1", "min_nodes: 4", 1)
		}, []string{"cluster.max_nodes", "cluster.min_nodes"}},
		{"port in use", func(_ *clustertest.Fixture, y string) string {
			return strings.Replace(y, "grpc: 127.0.0.1:0", "grpc: "+busy.Addr().String(), 1)
		}, []string{"cluster.grpc", busy.Addr().String()}},
		{"metrics port in use", func(_ *clustertest.Fixture, y string) string {
			return y + "metrics:\n  address: " + busy.Addr().String() + "\n"
		}, []string{"metrics.address", busy.Addr().String()}},
		{"dashboard port in use", func(_ *clustertest.Fixture, y string) string {
			return y + "metrics:\n  dashboard: " + busy.Addr().String() + "\n"
		}, []string{"metrics.dashboard", busy.Addr().String()}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			f := newFixture(t, "bad", 1, 1, "")
			f.Write(t, tc.edit(f, f.YAML))
			p := clustertest.Start(t, ctx, f.Dir, nil, coordBin, "--config", "cluster.yaml")
			if code := p.Wait(t, 25*time.Second); code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, p.Text())
			}
			for _, w := range tc.want {
				if !strings.Contains(p.Text(), w) {
					t.Errorf("error does not mention %q:\n%s", w, p.Text())
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
	wantW, wantB := uninterrupted(t, ctx, f, 1)

	// The node tries to rejoin its lost coordinator for 2 s, then fails.
	f.NodeArgs = []string{"--rejoin-timeout", "2s"}
	c := runCluster(t, ctx, f, 1, []string{"GONODE_STEP_DELAY=20ms"})
	f.NodeArgs = nil
	c.Coord.WaitFor(t, `checkpoint written" path=\S+ applied=10`, 60*time.Second)
	_ = c.Coord.Cmd.Process.Signal(syscall.SIGKILL)
	c.Coord.Wait(t, 10*time.Second)
	if code := c.Nodes[0].Wait(t, 30*time.Second); code == 0 {
		t.Fatal("node exited 0 after losing its coordinator")
	}

	c = runCluster(t, ctx, f, 1, nil, "--resume")
	if code := c.Coord.Wait(t, 60*time.Second); code != 0 {
		t.Fatalf("resumed run: exit %d", code)
	}
	if !strings.Contains(c.Coord.Text(), `msg=resuming checkpoint=ckpt/step-000000010.ckpt applied=10`) {
		t.Fatal("the coordinator did not resume")
	}
	gotW, gotB := readModel(t, filepath.Join(f.Dir, "out"))
	got, want := append(gotW, gotB...), append(wantW, wantB...)
	for i := range want {
		if d := math.Abs(float64(got[i] - want[i])); d > 1e-6 {
			t.Fatalf("resumed run differs from the uninterrupted one at parameter %d by %g", i, d)
		}
	}
}

// TestLateJoinerEntersAtStepBoundary: a node that joins a running world
// below max_nodes enters at a step boundary, with the state pulled from a
// live replica, and the run finishes with every sample committed once and
// all three replicas identical (issue 11, defect 8).
func TestLateJoinerEntersAtStepBoundary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("late-%d", os.Getpid()), 2, 3, "")
	env := []string{"GONODE_STEP_DELAY=40ms"}
	c := runCluster(t, ctx, f, 2, env)
	c.Coord.WaitFor(t, `replicas identical" applied=3 `, 60*time.Second)
	_, nodeBin := build(t)
	late := c.StartNode(t, ctx, f, nodeBin, "late", env)
	m := c.Coord.WaitFor(t, `generation formed" gen=2 size=3 nodes="\[[^]]*late[^]]*\]" spares=0 applied=(\d+)`, 60*time.Second)
	if code := c.Coord.Wait(t, 90*time.Second); code != 0 {
		t.Fatalf("coordinator exit %d", code)
	}
	out := c.Coord.Text()
	for _, want := range []string{
		`growing the world at a step boundary`,
		`epoch complete" epoch=0 committed=96 missing=0 samples=96`,
		`epoch complete" epoch=1 committed=96 missing=0 samples=96`,
		`replicas identical" applied=24`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator log lacks %q", want)
		}
	}
	if strings.Contains(out, "step aborted") {
		t.Errorf("a join aborted a step:\n%s", out)
	}
	if a := m[1]; a == "24" {
		t.Errorf("the late node entered only after the last step (applied=%s)", a)
	}
	for i, p := range c.Nodes {
		if code := p.Wait(t, 10*time.Second); code != 0 {
			t.Errorf("node %d exit %d", i, code)
		}
	}
	if !strings.Contains(late.Text(), "generation") {
		t.Errorf("the late node never joined a generation:\n%s", late.Text())
	}
}

// TestOverlapSameWeightsAcrossProcesses: three node processes reduce the
// gradient in 64 KiB buckets (each weight row of the bag-of-words model is
// one), started from the trainer's ready reports (allreduce.overlap: true)
// or after the micro-batches (false): the exported weights are equal bit
// for bit, and the nodes report the buckets they used.
func TestOverlapSameWeightsAcrossProcesses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	results := map[bool][]float32{}
	for _, overlap := range []bool{true, false} {
		f := newFixture(t, fmt.Sprintf("ovl%v-%d", overlap, os.Getpid()), 3, 3, "")
		f.YAML = strings.Replace(f.YAML, "allreduce:\n", fmt.Sprintf("allreduce:\n  bucket_bytes: 65536\n  overlap: %v\n", overlap), 1)
		f.Write(t, f.YAML)
		c := runCluster(t, ctx, f, 3, nil)
		if code := c.Coord.Wait(t, 90*time.Second); code != 0 {
			t.Fatalf("overlap %v: coordinator exit %d", overlap, code)
		}
		for _, p := range c.Nodes {
			if code := p.Wait(t, 10*time.Second); code != 0 {
				t.Fatalf("overlap %v: node exit %d", overlap, code)
			}
			if want := fmt.Sprintf(" buckets=3 bucket_bytes=65536 overlap=%v", overlap); !strings.Contains(p.Text(), want) {
				got := regexp.MustCompile(`.*gradient buckets.*`).FindString(p.Text())
				t.Fatalf("node log lacks %q; it has %q", want, got)
			}
		}
		if !strings.Contains(c.Coord.Text(), "replicas identical\" applied=24") {
			t.Fatalf("overlap %v: no digest agreement after the last step", overlap)
		}
		w, b := readModel(t, filepath.Join(f.Dir, "out"))
		results[overlap] = append(w, b...)
	}
	on, off := results[true], results[false]
	if len(on) != len(off) {
		t.Fatalf("parameter counts differ: %d vs %d", len(on), len(off))
	}
	for i := range on {
		if math.Float32bits(on[i]) != math.Float32bits(off[i]) {
			t.Fatalf("parameter %d: %v with overlap, %v without", i, on[i], off[i])
		}
	}
}
