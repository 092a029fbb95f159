// Package clustertest runs ringtune clusters as real processes for tests:
// it builds the binaries once per test binary, writes run directories (key,
// model directory, a subset of the real dataset, cluster.yaml), and starts
// the coordinator and nodes on loopback with captured output. Every process
// gets a context deadline and is killed at the end of its test, so no test
// can hang or leave a process behind.
package clustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringtune/ringtune/auth"
)

// Root is the module's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var bins struct {
	mu    sync.Mutex
	dir   string
	built map[string]string
}

// Build compiles each main package (a path relative to the module root, like
// "./cmd/coordinator") once per test binary and returns the binaries' paths.
// libtorch packages need the cgo flags of scripts/env.sh in the environment.
func Build(t testing.TB, pkgs ...string) []string {
	t.Helper()
	bins.mu.Lock()
	defer bins.mu.Unlock()
	if bins.dir == "" {
		d, err := os.MkdirTemp("", "ringtune-bin-")
		if err != nil {
			t.Fatal(err)
		}
		bins.dir, bins.built = d, map[string]string{}
	}
	out := make([]string, len(pkgs))
	for i, pkg := range pkgs {
		if p, ok := bins.built[pkg]; ok {
			out[i] = p
			continue
		}
		p := filepath.Join(bins.dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-o", p, pkg)
		cmd.Dir = Root()
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
		bins.built[pkg], out[i] = p, p
	}
	return out
}

// Cleanup removes the built binaries; call it from TestMain after m.Run.
func Cleanup() {
	bins.mu.Lock()
	defer bins.mu.Unlock()
	if bins.dir != "" {
		_ = os.RemoveAll(bins.dir)
		bins.dir, bins.built = "", nil
	}
}

// DataFile is a file under the repository's .data directory, written by
// scripts/fetch-data.sh; the test is skipped, saying so, when it is missing.
func DataFile(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(Root(), ".data", name)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%s missing: run scripts/fetch-data.sh", p)
	}
	return p
}

// HeadLines copies the first n lines of src to dst.
func HeadLines(t testing.TB, src, dst string, n int) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if err := os.WriteFile(dst, []byte(strings.Join(lines[:min(n, len(lines))], "")), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Options describe a run directory.
type Options struct {
	Label              string
	MinNodes, MaxNodes int
	// ModelConfig is the model directory's config.json.
	ModelConfig string
	// TrainLines and EvalLines are how many sentences of the real dataset
	// the run uses.
	TrainLines, EvalLines int
	// Train is the body of the train: section (indented YAML lines).
	Train string
	// Model is the body of the model: section after path (indented lines).
	Model string
}

// Fixture is a run directory: cluster.key, model/, train.jsonl,
// eval.jsonl and cluster.yaml.
type Fixture struct {
	Dir, Key, YAML string
	Label          string
	// NodeArgs are added to every node's command line (`join` flags).
	NodeArgs []string
}

// NewFixture writes a run directory.
func NewFixture(t testing.TB, o Options) *Fixture {
	t.Helper()
	d := t.TempDir()
	f := &Fixture{Dir: d, Key: filepath.Join(d, "cluster.key"), Label: o.Label}
	if _, err := auth.WriteKeyFile(f.Key); err != nil {
		t.Fatal(err)
	}
	tok := DataFile(t, "tokenizers/bert-base-uncased/tokenizer.json")
	HeadLines(t, DataFile(t, "sentiment/train.jsonl"), filepath.Join(d, "train.jsonl"), o.TrainLines)
	HeadLines(t, DataFile(t, "sentiment/eval.jsonl"), filepath.Join(d, "eval.jsonl"), o.EvalLines)
	md := filepath.Join(d, "model")
	if err := os.MkdirAll(md, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(md, "config.json"), []byte(o.ModelConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	tb, err := os.ReadFile(tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(md, "tokenizer.json"), tb, 0o644); err != nil {
		t.Fatal(err)
	}
	f.YAML = fmt.Sprintf(`cluster:
  bind: 127.0.0.1:0
  grpc: 127.0.0.1:0
  key_file: cluster.key
  min_nodes: %d
  max_nodes: %d
  settle: 300ms
  label: %s
model:
  path: model
%sdata:
  train_file: train.jsonl
  eval_file: eval.jsonl
  max_length: 32
  tokenizer: model/tokenizer.json
train:
%sallreduce:
  timeout: 5s
checkpoint:
  dir: ckpt
  every: 10
output:
  dir: out
`, o.MinNodes, o.MaxNodes, o.Label, o.Model, o.Train)
	f.Write(t, f.YAML)
	return f
}

// Write replaces cluster.yaml and returns its path.
func (f *Fixture) Write(t testing.TB, yaml string) string {
	t.Helper()
	p := filepath.Join(f.Dir, "cluster.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Proc is a running process with captured output.
type Proc struct {
	Cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

// Write captures output.
func (p *Proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// Text is the output so far.
func (p *Proc) Text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Start runs name with args in dir; the process dies with ctx or at the end
// of the test, whose log then shows its output if the test failed.
func Start(t testing.TB, ctx context.Context, dir string, env []string, name string, args ...string) *Proc {
	t.Helper()
	p := &Proc{done: make(chan struct{})}
	p.Cmd = exec.CommandContext(ctx, name, args...)
	p.Cmd.Dir = dir
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout, p.Cmd.Stderr = p, p
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.Cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("output of %s %v:\n%s", filepath.Base(name), args, p.Text())
		}
	})
	return p
}

// Wait waits for the exit (failing the test after d: a hang) and returns
// the exit code.
func (p *Proc) Wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("process %v did not finish within %s (hang)", p.Cmd.Args, d)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("process %v: %v", p.Cmd.Args, p.err)
	}
	return 0
}

// WaitFor polls the output for re (a deadline against hangs, not a timing
// assertion) and returns its first match's submatches.
func (p *Proc) WaitFor(t testing.TB, re string, d time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if m := rx.FindStringSubmatch(p.Text()); m != nil {
			return m
		}
		select {
		case <-p.done:
			if m := rx.FindStringSubmatch(p.Text()); m != nil {
				return m
			}
			t.Fatalf("%v exited before printing %q", p.Cmd.Args, re)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%v did not print %q within %s", p.Cmd.Args, re, d)
	return nil
}

// Cluster is a coordinator and its nodes.
type Cluster struct {
	Coord        *Proc
	Nodes        []*Proc
	Gossip, GRPC string
}

// RunCluster starts the coordinator of f and n nodes (`NODEBIN join`).
func RunCluster(t testing.TB, ctx context.Context, f *Fixture, coordBin, nodeBin string, n int, nodeEnv []string, coordArgs ...string) *Cluster {
	t.Helper()
	c := &Cluster{}
	c.Coord = Start(t, ctx, f.Dir, nil, coordBin, append([]string{"--config", "cluster.yaml"}, coordArgs...)...)
	m := c.Coord.WaitFor(t, `gossip=(\S+) grpc=(\S+)`, 20*time.Second)
	c.Gossip, c.GRPC = m[1], m[2]
	for i := range n {
		c.StartNode(t, ctx, f, nodeBin, fmt.Sprintf("%s-n%d", f.Label, i), nodeEnv)
	}
	return c
}

// StartNode starts one more node named name (`NODEBIN join`) with env added
// to its environment, caching model files in f.Dir/cache-NAME, and appends
// it to c.Nodes; tests use it to give one node a different environment.
func (c *Cluster) StartNode(t testing.TB, ctx context.Context, f *Fixture, nodeBin, name string, env []string) *Proc {
	t.Helper()
	p := Start(t, ctx, f.Dir, env, nodeBin, append([]string{"join", "--coordinator", c.Gossip, "--key-file", f.Key,
		"--bind", "127.0.0.1:0", "--name", name, "--label", f.Label, "--cache-dir", filepath.Join(f.Dir, "cache-"+name), "--join-timeout", "10s"}, f.NodeArgs...)...)
	c.Nodes = append(c.Nodes, p)
	return p
}
