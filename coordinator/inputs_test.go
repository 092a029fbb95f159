package coordinator_test

// Bad input, tried on the real coordinator binary: the catalogue of
// docs/errors.md (each row run, exit code and message checked), resuming a
// different run, two coordinators on one directory, and nodes that all
// fail to set up the model.

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/coordinator"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/internal/clustertest"
	"github.com/ringtune/ringtune/model/hfspec"
	"github.com/ringtune/ringtune/model/safetensors"
)

// catalogueRow is one row of docs/errors.md.
type catalogueRow struct {
	name, msg string
	code      int
}

// readCatalogue parses the rows of docs/errors.md: | `name` | area | input | exit | `message` |.
func readCatalogue(t *testing.T) []catalogueRow {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(clustertest.Root(), "docs", "errors.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `([a-z0-9-]+)` \\|.*\\| (\\d+) \\| `([^`]+)` \\|$")
	var rows []catalogueRow
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			code, _ := strconv.Atoi(m[2])
			rows = append(rows, catalogueRow{name: m[1], code: code, msg: m[3]})
		} else if strings.HasPrefix(sc.Text(), "| `") {
			t.Errorf("docs/errors.md: malformed row %q", sc.Text())
		}
	}
	return rows
}

// runDir is what a catalogue case prepares: the fixture, and the
// coordinator's arguments and environment.
type runDir struct {
	t    *testing.T
	f    *clustertest.Fixture
	yaml string
	args []string
	env  []string
	node bool // run `node join` (the test node binary) instead of the coordinator
}

func (r *runDir) replace(old, new string) {
	r.t.Helper()
	if !strings.Contains(r.yaml, old) {
		r.t.Fatalf("fixture cluster.yaml lacks %q", old)
	}
	r.yaml = strings.Replace(r.yaml, old, new, 1)
}

func (r *runDir) join(args ...string) { r.node, r.args = true, append([]string{"join"}, args...) }

func (r *runDir) train(line string) {
	r.replace("  digest_every: 1\n", "  digest_every: 1\n  "+line+"\n")
}

func (r *runDir) write(rel, body string) {
	r.t.Helper()
	p := filepath.Join(r.f.Dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

func (r *runDir) modelConfig(edit func(string) string) {
	r.t.Helper()
	r.write("model/config.json", edit(fixtureModelConfig))
}

// weights writes model/model.safetensors for the fixture's model, edited.
func (r *runDir) weights(edit func([]safetensors.Tensor) []safetensors.Tensor) string {
	r.t.Helper()
	c, err := hfspec.ReadConfig(filepath.Join(r.f.Dir, "model"))
	if err != nil {
		r.t.Fatal(err)
	}
	l, err := hfspec.NewLayout(c, data.Classification, 2)
	if err != nil {
		r.t.Fatal(err)
	}
	var ts []safetensors.Tensor
	for _, p := range l.Params {
		ts = append(ts, safetensors.FromFloat32(p.Name, p.Shape, make([]float32, p.Numel())))
	}
	p := filepath.Join(r.f.Dir, "model", safetensors.SingleFileName)
	if err := safetensors.Write(p, edit(ts), nil); err != nil {
		r.t.Fatal(err)
	}
	r.replace("init: random", "init: pretrained")
	return p
}

// holdLock takes the flock a coordinator would hold on path, from this
// process, with a holder line like a coordinator's.
func (r *runDir) holdLock(path string) {
	r.t.Helper()
	p := filepath.Join(r.f.Dir, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	fh, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { fh.Close() })
	if err := syscall.Flock(int(fh.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		r.t.Fatal(err)
	}
	if _, err := fh.WriteString("pid 4242 on host testhost since 2026-11-30T00:00:00Z\n"); err != nil {
		r.t.Fatal(err)
	}
}

// finishedRun is a fixture directory after one complete run, whose
// checkpoints the resume cases copy; made once per test binary.
var finishedRun struct {
	once sync.Once
	ckpt string
}

func (r *runDir) resumeFrom() {
	r.t.Helper()
	finishedRun.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		f := newFixture(r.t, fmt.Sprintf("pin-%d", os.Getpid()), 1, 1, "")
		c := runCluster(r.t, ctx, f, 1, nil)
		if code := c.Coord.Wait(r.t, 90*time.Second); code != 0 {
			r.t.Fatalf("run to make a checkpoint: exit %d", code)
		}
		c.Nodes[0].Wait(r.t, 10*time.Second)
		// Outlive this subtest's TempDir: later resume cases copy it.
		d, err := os.MkdirTemp("", "ringtune-pin-")
		if err != nil {
			r.t.Fatal(err)
		}
		if err := os.CopyFS(filepath.Join(d, "ckpt"), os.DirFS(filepath.Join(f.Dir, "ckpt"))); err != nil {
			r.t.Fatal(err)
		}
		finishedRun.ckpt = filepath.Join(d, "ckpt")
	})
	if finishedRun.ckpt == "" {
		r.t.Fatal("no checkpoint from the finished run")
	}
	if err := os.CopyFS(filepath.Join(r.f.Dir, "ckpt"), os.DirFS(finishedRun.ckpt)); err != nil {
		r.t.Fatal(err)
	}
	r.args = append(r.args, "--resume")
}

// catalogueCases prepares each row of docs/errors.md; busy is a TCP
// address in use.
func catalogueCases(busy string) map[string]func(r *runDir) {
	appendLine := func(r *runDir, line string) { appendLine(r.t, filepath.Join(r.f.Dir, "train.jsonl"), line) }
	return map[string]func(r *runDir){
		// flags
		"flag-no-config":      func(r *runDir) { r.args = []string{} },
		"flag-unknown":        func(r *runDir) { r.args = append(r.args, "--bogus") },
		"flag-bad-value":      func(r *runDir) { r.args = append(r.args, "--train.lr", "fast") },
		"flag-bad-duration":   func(r *runDir) { r.args = append(r.args, "--cluster.settle", "5") },
		"flag-log-level":      func(r *runDir) { r.args = append(r.args, "--log-level", "loud") },
		"flag-extra-argument": func(r *runDir) { r.args = []string{"train", "--config", "cluster.yaml"} },
		"flag-config-missing": func(r *runDir) { r.args = []string{"--config", "nope.yaml"} },
		"keygen-no-file":      func(r *runDir) { r.args = []string{"keygen"} },
		"keygen-exists":       func(r *runDir) { r.args = []string{"keygen", "cluster.key"} },
		"resume-nothing":      func(r *runDir) { r.args = append(r.args, "--resume") },
		// node join (the test node shares the real node's join command)
		"node-no-coordinator": func(r *runDir) { r.join("--key-file", "cluster.key") },
		"node-key-missing":    func(r *runDir) { r.join("--coordinator", "127.0.0.1:1", "--key-file", "nokey") },
		"node-key-short": func(r *runDir) {
			r.write("cluster.key", base64.StdEncoding.EncodeToString([]byte("tiny"))+"\n")
			r.join("--coordinator", "127.0.0.1:1", "--key-file", "cluster.key")
		},
		"node-bad-bind": func(r *runDir) {
			r.join("--coordinator", "127.0.0.1:1", "--key-file", "cluster.key", "--bind", "nonsense")
		},
		"node-unknown-flag": func(r *runDir) { r.join("--bogus") },
		"node-log-level": func(r *runDir) {
			r.join("--coordinator", "127.0.0.1:1", "--key-file", "cluster.key", "--log-level", "loud")
		},
		"node-unreachable": func(r *runDir) {
			r.join("--coordinator", "127.0.0.1:1", "--key-file", "cluster.key", "--bind", "127.0.0.1:0", "--join-timeout", "1s")
		},
		// configuration file and environment
		"yaml-malformed":       func(r *runDir) { r.yaml += "train: [\n" },
		"yaml-not-mapping":     func(r *runDir) { r.yaml = "- cluster\n- model\n" },
		"key-unknown":          func(r *runDir) { r.replace("  epochs: 2", "  epochz: 2") },
		"section-unknown":      func(r *runDir) { r.yaml += "trian:\n  x: 1\n" },
		"section-not-mapping":  func(r *runDir) { r.yaml += "metrics: 5\n" },
		"duration-no-unit":     func(r *runDir) { r.replace("settle: 300ms", "settle: 5") },
		"timeout-no-unit":      func(r *runDir) { r.replace("timeout: 5s", "timeout: 60") },
		"type-integer":         func(r *runDir) { r.replace("min_nodes: 1", "min_nodes: one") },
		"type-bool":            func(r *runDir) { r.train("drop_last: maybe") },
		"type-list":            func(r *runDir) { r.train("betas: 0.9") },
		"min-above-max":        func(r *runDir) { r.replace("min_nodes: 1", "min_nodes: 4") },
		"task-unknown":         func(r *runDir) { r.replace("task: classification", "task: ner") },
		"labels-count":         func(r *runDir) { r.replace("num_labels: 2\n", "num_labels: 2\n  labels: [a, b, c]\n") },
		"batch-below-micro":    func(r *runDir) { r.replace("global_batch: 8", "global_batch: 2") },
		"lr-zero":              func(r *runDir) { r.replace("lr: 0.5", "lr: 0") },
		"warmup-both":          func(r *runDir) { r.replace("warmup_ratio: 0\n", "warmup_ratio: 0.1\n  warmup_steps: 5\n") },
		"chunk-small":          func(r *runDir) { r.replace("timeout: 5s", "timeout: 5s\n  chunk_bytes: 100") },
		"bucket-small":         func(r *runDir) { r.replace("timeout: 5s", "timeout: 5s\n  bucket_bytes: 1000") },
		"env-unknown":          func(r *runDir) { r.env = append(r.env, "RINGTUNE_TRAIN_EPOCHZ=3") },
		"env-duration-no-unit": func(r *runDir) { r.env = append(r.env, "RINGTUNE_CLUSTER_SETTLE=5") },
		"env-wrong-type":       func(r *runDir) { r.env = append(r.env, "RINGTUNE_TRAIN_EPOCHS=three") },
		"checkpoint-in-output": func(r *runDir) { r.replace("dir: ckpt", "dir: out/ckpt") },
		"format-unknown": func(r *runDir) {
			r.write("train.txt", "x\n")
			r.replace("train_file: train.jsonl", "train_file: train.txt")
		},
		// addresses
		"bind-not-host-port": func(r *runDir) { r.replace("bind: 127.0.0.1:0", "bind: nonsense") },
		"grpc-in-use":        func(r *runDir) { r.replace("grpc: 127.0.0.1:0", "grpc: "+busy) },
		"gossip-in-use":      func(r *runDir) { r.replace("bind: 127.0.0.1:0", "bind: "+busy) },
		"metrics-in-use":     func(r *runDir) { r.yaml += "metrics:\n  address: " + busy + "\n" },
		// key files
		"key-unset":      func(r *runDir) { r.replace("  key_file: cluster.key\n", "") },
		"key-missing":    func(r *runDir) { r.replace("key_file: cluster.key", "key_file: nokey") },
		"key-empty":      func(r *runDir) { r.write("cluster.key", "\n") },
		"key-not-base64": func(r *runDir) { r.write("cluster.key", "not-a-key!\n") },
		"key-short":      func(r *runDir) { r.write("cluster.key", base64.StdEncoding.EncodeToString([]byte("tiny"))+"\n") },
		// model directories
		"model-missing":   func(r *runDir) { r.replace("path: model", "path: nomodel") },
		"model-is-file":   func(r *runDir) { r.replace("path: model", "path: train.jsonl") },
		"model-no-config": func(r *runDir) { os.Remove(filepath.Join(r.f.Dir, "model", "config.json")) },
		"model-not-json":  func(r *runDir) { r.modelConfig(func(s string) string { return s[:20] }) },
		"model-type": func(r *runDir) {
			r.modelConfig(func(s string) string { return strings.Replace(s, `"bert"`, `"t5"`, 1) })
		},
		"model-size-zero": func(r *runDir) {
			r.modelConfig(func(s string) string { return strings.Replace(s, `"hidden_size":8`, `"hidden_size":0`, 1) })
		},
		"model-wrong-task": func(r *runDir) {
			r.write("model/config.json", `{"model_type":"gpt2","vocab_size":100,"n_embd":8,"n_layer":1,"n_head":2}`)
		},
		"model-no-weights": func(r *runDir) { r.replace("init: random", "init: pretrained") },
		"weights-truncated": func(r *runDir) {
			p := r.weights(func(ts []safetensors.Tensor) []safetensors.Tensor { return ts })
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-10)
		},
		"weights-bad-header": func(r *runDir) {
			p := r.weights(func(ts []safetensors.Tensor) []safetensors.Tensor { return ts })
			os.WriteFile(p, []byte("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"), 0o644)
		},
		"weights-wrong-shape": func(r *runDir) {
			r.weights(func(ts []safetensors.Tensor) []safetensors.Tensor {
				ts[0] = safetensors.FromFloat32(ts[0].Name, []int64{3, 4}, make([]float32, 12))
				return ts
			})
		},
		"weights-missing-tensor": func(r *runDir) {
			r.weights(func(ts []safetensors.Tensor) []safetensors.Tensor { return ts[1:] })
		},
		"weights-bin-corrupt": func(r *runDir) {
			r.write("model/pytorch_model.bin", "PK not a zip")
			r.replace("init: random", "init: pretrained")
		},
		// datasets
		"train-missing":  func(r *runDir) { r.replace("train_file: train.jsonl", "train_file: nodata.jsonl") },
		"train-no-label": func(r *runDir) { appendLine(r, `{"text":"no label here"}`) },
		"train-label":    func(r *runDir) { appendLine(r, `{"text":"bad label","label":7}`) },
		"train-bad-json": func(r *runDir) { appendLine(r, `{"text": "unclosed`) },
		"train-no-text":  func(r *runDir) { appendLine(r, `{"label":1}`) },
		"train-empty":    func(r *runDir) { r.write("train.jsonl", "") },
		"train-csv-field": func(r *runDir) {
			r.write("train.csv", "sentence,label\nfine,1\n")
			r.replace("train_file: train.jsonl", "train_file: train.csv")
		},
		"train-too-small": func(r *runDir) {
			r.replace("global_batch: 8", "global_batch: 200")
			r.train("drop_last: true")
		},
		"eval-missing": func(r *runDir) { r.replace("eval_file: eval.jsonl", "eval_file: noeval.jsonl") },
		// tokenizers
		"tokenizer-missing": func(r *runDir) { r.replace("tokenizer: model/tokenizer.json", "tokenizer: notok.json") },
		"tokenizer-empty-dir": func(r *runDir) {
			os.MkdirAll(filepath.Join(r.f.Dir, "tokdir"), 0o755)
			r.replace("tokenizer: model/tokenizer.json", "tokenizer: tokdir")
		},
		"tokenizer-corrupt": func(r *runDir) {
			r.write("bad/tokenizer.json", "{")
			r.replace("tokenizer: model/tokenizer.json", "tokenizer: bad/tokenizer.json")
		},
		// output and checkpoint directories
		"output-under-file":  func(r *runDir) { r.replace("dir: out", "dir: train.jsonl/sub/model") },
		"output-is-file":     func(r *runDir) { r.replace("dir: out", "dir: train.jsonl") },
		"checkpoint-is-file": func(r *runDir) { r.replace("dir: ckpt", "dir: train.jsonl") },
		"checkpoint-locked":  func(r *runDir) { r.holdLock("ckpt/.ringtune.lock") },
		"output-locked":      func(r *runDir) { r.holdLock(".out.ringtune.lock") },
		// --resume of a different run
		"resume-seed":         func(r *runDir) { r.resumeFrom(); r.train("seed: 7") },
		"resume-global-batch": func(r *runDir) { r.resumeFrom(); r.replace("global_batch: 8", "global_batch: 6") },
		"resume-drop-last":    func(r *runDir) { r.resumeFrom(); r.train("drop_last: true") },
		"resume-epochs":       func(r *runDir) { r.resumeFrom(); r.replace("epochs: 2", "epochs: 3") },
		"resume-data":         func(r *runDir) { r.resumeFrom(); appendLine(r, `{"text":"one more review","label":1}`) },
		"resume-max-length":   func(r *runDir) { r.resumeFrom(); r.replace("max_length: 32", "max_length: 16") },
		"resume-model": func(r *runDir) {
			r.resumeFrom()
			r.modelConfig(func(s string) string {
				return strings.Replace(s, `"intermediate_size":16`, `"intermediate_size":32`, 1)
			})
		},
	}
}

// TestBadInputCatalogue runs every row of docs/errors.md against the real
// coordinator binary: the exit code and the message must be the row's.
// Every row needs a case here and every case a row.
func TestBadInputCatalogue(t *testing.T) {
	coordBin, nodeBin := build(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	rows := readCatalogue(t)
	if len(rows) < 40 {
		t.Errorf("docs/errors.md has %d rows, want at least 40", len(rows))
	}
	cases := catalogueCases(busy.Addr().String())
	seen := map[string]bool{}
	for _, row := range rows {
		seen[row.name] = true
		prep, ok := cases[row.name]
		if !ok {
			t.Errorf("docs/errors.md row %s has no case in TestBadInputCatalogue", row.name)
			continue
		}
		t.Run(row.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			f := newFixture(t, "bad", 1, 1, "")
			r := &runDir{t: t, f: f, yaml: f.YAML, args: []string{"--config", "cluster.yaml"}}
			prep(r)
			f.Write(t, r.yaml)
			bin := coordBin
			if r.node {
				bin = nodeBin
			}
			p := clustertest.Start(t, ctx, f.Dir, r.env, bin, r.args...)
			if code := p.Wait(t, 30*time.Second); code != row.code {
				t.Fatalf("exit code %d, want %d; output:\n%s", code, row.code, p.Text())
			}
			if !strings.Contains(p.Text(), row.msg) {
				t.Errorf("output does not contain %q:\n%s", row.msg, p.Text())
			}
			// Addresses are taken when the coordinator starts serving.
			if !strings.HasSuffix(row.name, "-in-use") && strings.Contains(p.Text(), "coordinator up") {
				t.Errorf("the coordinator started serving before rejecting its input")
			}
		})
	}
	for name := range cases {
		if !seen[name] {
			t.Errorf("case %s has no row in docs/errors.md", name)
		}
	}
	if finishedRun.ckpt != "" {
		_ = os.RemoveAll(filepath.Dir(finishedRun.ckpt))
		finishedRun.ckpt = ""
		finishedRun.once = sync.Once{}
	}
}

// TestTwoCoordinatorsCannotShareDirectories starts a coordinator, then a
// second one on the same checkpoint.dir, then on the same output.dir: each
// is refused with exit 2 naming the directory and the first one's pid and
// host. Once the first dies (SIGKILL, no clean-up), the directories are
// free again.
func TestTwoCoordinatorsCannotShareDirectories(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	coordBin, _ := build(t)
	f := newFixture(t, fmt.Sprintf("lock-%d", os.Getpid()), 1, 1, "")
	first := clustertest.Start(t, ctx, f.Dir, nil, coordBin, "--config", "cluster.yaml")
	first.WaitFor(t, `coordinator up`, 30*time.Second)
	host, _ := os.Hostname()
	holder := fmt.Sprintf("pid %d on host %s", first.Cmd.Process.Pid, host)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "checkpoint.dir: ckpt is in use by another coordinator (" + holder},
		{[]string{"--checkpoint.dir", "ckpt2"}, "output.dir: out is in use by another coordinator (" + holder},
	} {
		second := clustertest.Start(t, ctx, f.Dir, nil, coordBin, append([]string{"--config", "cluster.yaml"}, tc.args...)...)
		if code := second.Wait(t, 30*time.Second); code != 2 {
			t.Fatalf("second coordinator %v: exit %d, want 2:\n%s", tc.args, code, second.Text())
		}
		if !strings.Contains(second.Text(), tc.want) {
			t.Errorf("second coordinator %v does not say %q:\n%s", tc.args, tc.want, second.Text())
		}
	}
	_ = first.Cmd.Process.Signal(syscall.SIGKILL)
	first.Wait(t, 10*time.Second)
	third := clustertest.Start(t, ctx, f.Dir, nil, coordBin, "--config", "cluster.yaml")
	third.WaitFor(t, `coordinator up`, 30*time.Second)
}

// TestEveryNodeFailingSetupEndsTheRun: a model that every node fails to
// load (here a fault in the test node, since the coordinator's own check
// catches the models it can see are broken) ends the run with exit 2 and
// the nodes' error, instead of a coordinator that waits forever.
func TestEveryNodeFailingSetupEndsTheRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("fail-%d", os.Getpid()), 2, 2, "")
	c := runCluster(t, ctx, f, 2, []string{"GONODE_FAIL_SETUP=cannot load the model: injected fault"})
	if code := c.Coord.Wait(t, 60*time.Second); code != 2 {
		t.Fatalf("coordinator exit %d when every node failed to set up, want 2", code)
	}
	out := c.Coord.Text()
	for _, want := range []string{"every node failed to set up the model (2: ", "cannot load the model: injected fault"} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator output lacks %q", want)
		}
	}
	for i, n := range c.Nodes {
		if code := n.Wait(t, 30*time.Second); code == 0 {
			t.Errorf("node %d exit 0 after failing its setup", i)
		}
	}
}

// TestExampleConfigValidates loads examples/cluster.yaml as shipped and
// runs the coordinator's input checks on it (key, model, data, tokenizer,
// directories), with only the key and the run directories moved to a
// temporary directory.
func TestExampleConfigValidates(t *testing.T) {
	clustertest.DataFile(t, "models/bert-mini/config.json")
	clustertest.DataFile(t, "sentiment/train.jsonl")
	dir := t.TempDir()
	key := filepath.Join(dir, "cluster.key")
	coordBin, _ := build(t)
	// The key the example names must be created by keygen, as its header says.
	p := clustertest.Start(t, context.Background(), dir, nil, coordBin, "keygen", key)
	if code := p.Wait(t, 30*time.Second); code != 0 {
		t.Fatalf("coordinator keygen: exit %d\n%s", code, p.Text())
	}
	t.Setenv("RINGTUNE_CLUSTER_KEY_FILE", key)
	t.Setenv("RINGTUNE_CHECKPOINT_DIR", filepath.Join(dir, "ckpt"))
	t.Setenv("RINGTUNE_OUTPUT_DIR", filepath.Join(dir, "model"))
	cfg, err := config.Load(filepath.Join(clustertest.Root(), "examples", "cluster.yaml"), nil)
	if err != nil {
		t.Fatalf("examples/cluster.yaml: %v", err)
	}
	c, err := coordinator.New(coordinator.Options{Config: cfg})
	if err != nil {
		t.Fatalf("examples/cluster.yaml rejected by the coordinator: %v", err)
	}
	c.Close()
}
