package launchtest

// End to end: the launchers start the real coordinator and libtorch nodes,
// which train a tiny BERT to the end. The mechanics tests (launch_test.go,
// slurm_test.go) use a stand-in binary and cannot see whether the addresses,
// key and label the launchers pass actually form a working cluster; these
// tests can.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringtune/ringtune/internal/clustertest"
)

var (
	realOnce sync.Once
	realDir  string
	realErr  error
)

// realBinaries builds cmd/coordinator and cmd/node once per test binary run
// and returns their directory. cmd/node links libtorch, so the build uses
// scripts/env.sh's cgo flags whatever the test's own environment holds.
func realBinaries(t *testing.T) string {
	t.Helper()
	realOnce.Do(func() {
		realDir, realErr = os.MkdirTemp("", "launchtest-bin-")
		if realErr != nil {
			return
		}
		build := exec.Command("bash", "-c", `. scripts/env.sh && go build -o "$1" ./cmd/coordinator && go build -o "$2" ./cmd/node`, "build",
			filepath.Join(realDir, "coordinator"), filepath.Join(realDir, "node"))
		build.Dir = repoRoot()
		if out, err := build.CombinedOutput(); err != nil {
			realErr = fmt.Errorf("build cmd/coordinator and cmd/node: %v\n%s", err, out)
		}
	})
	if realErr != nil {
		t.Fatal(realErr)
	}
	return realDir
}

// tinyBERT is a 1-layer BERT (hidden 32) that trains in seconds on a CPU,
// as in node/cluster_test.go.
const tinyBERT = `{
  "architectures": ["BertForSequenceClassification"], "model_type": "bert",
  "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
  "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
  "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
  "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0
}`

// newRealEnv is a launchEnv whose bin/ holds the real binaries (hard links,
// so that the bin path still marks every process of this test alone) and
// whose config is a run directory for two nodes: 48 sentences of
// .data/sentiment, batches of 16, one epoch (3 steps), a parameter digest
// after every step. It returns the env and the run directory, where the
// coordinator writes the model (out/).
func newRealEnv(t *testing.T, label string) (*launchEnv, string) {
	t.Helper()
	src := realBinaries(t)
	f := clustertest.NewFixture(t, clustertest.Options{
		Label: fmt.Sprintf("%s-%d", label, os.Getpid()), MinNodes: 2, MaxNodes: 2,
		ModelConfig: tinyBERT, TrainLines: 48, EvalLines: 16,
		Model: "  task: classification\n  num_labels: 2\n  init: random\n",
		Train: `  epochs: 1
  global_batch: 16
  micro_batch: 8
  optimizer: adamw
  lr: 1.0e-3
  seed: 7
  threads: 1
  digest_every: 1
`,
	})
	dir := t.TempDir()
	e := &launchEnv{
		dir:     dir,
		bin:     filepath.Join(dir, "bin"),
		config:  filepath.Join(f.Dir, "cluster.yaml"),
		keyFile: f.Key,
		state:   filepath.Join(dir, "launch.state"),
		logs:    filepath.Join(dir, "logs"),
	}
	if err := os.MkdirAll(e.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"coordinator", "node"} {
		from, to := filepath.Join(src, name), filepath.Join(e.bin, name)
		if err := os.Link(from, to); err != nil {
			raw, err := os.ReadFile(from)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(to, raw, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	raw, err := os.ReadFile(e.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	e.key = strings.TrimSpace(string(raw))
	t.Cleanup(func() { killMarked(e.bin) })
	return e, f.Dir
}

// keyFilesOf adds to seen the key file paths on the command lines of the
// env's running coordinator and nodes (the launch's wrappers put them in
// private temp dirs that must be gone when the launch ends).
func keyFilesOf(e *launchEnv, seen map[string]string) {
	re := regexp.MustCompile(`--(?:key-file|cluster\.key_file) (\S+)`)
	for _, role := range []string{"coordinator", "node"} {
		for _, p := range stubs(e, role) {
			if m := re.FindStringSubmatch(p.cmdline); m != nil {
				seen[m[1]] = role
			}
		}
	}
}

// assertTrained checks the coordinator's log and the run directory after a
// successful run: a generation of both nodes (by name), each connected with
// its ring on its own host's address, replicas identical after the last of
// the 3 steps, the whole epoch committed, and the exported model directory.
func assertTrained(t *testing.T, coordLog, runDir string, rings map[string]string) {
	t.Helper()
	if !regexp.MustCompile(`generation formed.* size=2 `).MatchString(coordLog) {
		t.Errorf("the coordinator formed no generation of size 2:\n%s", coordLog)
	}
	for name, host := range rings {
		re := regexp.MustCompile(`node connected.* node=` + regexp.QuoteMeta(name) + ` ring=(\S+)`)
		m := re.FindStringSubmatch(coordLog)
		if m == nil {
			t.Errorf("node %s never connected to the coordinator:\n%s", name, coordLog)
		} else if !strings.HasPrefix(m[1], host+":") {
			t.Errorf("node %s advertises its ring at %s, want its host's address %s", name, m[1], host)
		}
	}
	if !strings.Contains(coordLog, `replicas identical" applied=3`) {
		t.Errorf("no digest agreement after the last step (want \"replicas identical\" applied=3):\n%s", coordLog)
	}
	if !strings.Contains(coordLog, "committed=48 missing=0") {
		t.Errorf("the epoch's ledger is not complete (want committed=48 missing=0):\n%s", coordLog)
	}
	for _, name := range []string{"config.json", "model.safetensors", "tokenizer.json"} {
		p := filepath.Join(runDir, "out", name)
		if st, err := os.Stat(p); err != nil || st.Size() == 0 {
			t.Errorf("exported model lacks %s: %v", p, err)
		}
	}
}

// A real cluster through scripts/launch.sh and the test's sshd: the
// coordinator here on 127.0.0.1, one libtorch node on each loopback "host"
// (node-a = 127.0.0.1, node-b = 127.0.0.2) reached over ssh. The run must
// train to the end with both nodes, each advertising its own host's address,
// exit 0, and leave no process, sshd session or key file behind.
func TestLaunchTrainsOverSSH(t *testing.T) {
	s := needSSHD(t)
	e, runDir := newRealEnv(t, "lt-ssh")
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	// The key files seen on the processes' command lines.
	keys := map[string]string{}
	t.Cleanup(func() {
		// Runs after startLaunch's cleanup has stopped the launch. After
		// a failure a wrapper may have been killed before it could remove
		// its key file: the test removes the ones it saw (only its
		// launch's private key directories).
		if t.Failed() {
			killMarked(e.bin)
			for k := range keys {
				if d := filepath.Dir(k); strings.HasPrefix(filepath.Base(d), "ringtune-key.") {
					os.RemoveAll(d)
				}
			}
		}
	})
	start := time.Now()
	l := startLaunch(t, "--hosts", "node-a,node-b", "--config", e.config, "--bin-dir", e.bin, "--key-file", e.keyFile,
		"--ssh-opts", "-F "+s.sshConfig, "--state-file", e.state, "--log-dir", e.logs,
		"--coordinator-addr", fmt.Sprintf("127.0.0.1:%d", port), "--node-port", "0", "--cpu",
		"--grace", "5", "--connect-timeout", "3",
		// One shared cache (the hosts share this filesystem; files are
		// renamed into place) instead of root's ~/.cache; a node that
		// cannot reach the coordinator gives up well before the deadline.
		"--node-args", "--cache-dir "+filepath.Join(e.dir, "cache")+" --join-timeout 20s")

	// Wait for the end, collecting the key files while the processes run.
	// A node that exits non-zero (it could not join, or crashed) fails the
	// test at once: the coordinator would wait for it until the deadline.
	checkedKey := false
	failed := regexp.MustCompile(`(?m)^launch.sh: (\S+): node exited with status (\d+)$`)
	deadline := time.Now().Add(2 * time.Minute)
	for running := true; running; {
		select {
		case <-l.done:
			running = false
		case <-time.After(100 * time.Millisecond):
		}
		keyFilesOf(e, keys)
		out := l.out.String()
		if !checkedKey && strings.Contains(out, "generation formed") {
			assertKeyNotInProcesses(t, e.key)
			checkedKey = true
		}
		if m := failed.FindStringSubmatch(out); m != nil {
			log, _ := os.ReadFile(filepath.Join(e.logs, m[1]+".log"))
			t.Fatalf("node %s exited with status %d before the run ended; its log %s:\n%s\nlaunch output:\n%s",
				m[1], atoi(m[2]), filepath.Join(e.logs, m[1]+".log"), log, out)
		}
		if running && time.Now().After(deadline) {
			t.Fatalf("launch.sh still running after 2m:\n%s", out)
		}
	}
	code := l.wait(t, time.Second)
	out := l.out.String()
	t.Logf("launch with real binaries took %v", time.Since(start).Round(time.Millisecond))
	if code != 0 {
		t.Fatalf("launch exited %d, want 0:\n%s", code, out)
	}
	coordLog, err := os.ReadFile(filepath.Join(e.logs, "coordinator.log"))
	if err != nil {
		t.Fatalf("coordinator log: %v", err)
	}
	assertTrained(t, string(coordLog), runDir, map[string]string{"node-a-0": "127.0.0.1", "node-b-0": "127.0.0.2"})
	for _, tag := range []string{"node-a:0", "node-b:0"} {
		if strings.Contains(out, tag+": node exited with status") {
			t.Errorf("%s did not exit cleanly:\n%s", tag, out)
		}
	}

	// Every process got a key file of its own: the coordinator's and one
	// for each node.
	var dirs []string
	roles := map[string]int{}
	for k, role := range keys {
		dirs = append(dirs, filepath.Dir(k))
		roles[role]++
	}
	sort.Strings(dirs)
	if roles["coordinator"] != 1 || roles["node"] != 2 {
		t.Errorf("key files seen: %v; want one for the coordinator and one per node", keys)
	}
	if _, err := os.Stat(e.state); !os.IsNotExist(err) {
		t.Errorf("state file %s left after the launch ended (%v)", e.state, err)
	}
	assertNothingLeft(t, e, s, dirs, 15*time.Second)
}

func atoi(s string) int {
	n := 0
	fmt.Sscan(s, &n)
	return n
}

// The same run through scripts/slurm/ringtune.sbatch on the test's
// one-machine Slurm: the coordinator in the batch script, two CPU tasks of
// one srun step as the nodes. The job must train to the end with both tasks
// and exit 0, leaving no process behind.
func TestSlurmBatchTrains(t *testing.T) {
	s := needSlurm(t)
	e, runDir := newRealEnv(t, "lt-slurm")
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// A free coordinator port instead of the mechanics tests' fixed one,
	// and a private model cache instead of root's ~/.cache (the job
	// inherits the environment).
	code, out := s.sbatch(t, e, fmt.Sprintf("RINGTUNE_PORT=%d", port), "RINGTUNE_GRACE=5",
		"XDG_CACHE_HOME="+filepath.Join(e.dir, "cache"))
	t.Logf("sbatch --wait with real binaries took %v", time.Since(start).Round(time.Millisecond))
	if code != 0 {
		t.Fatalf("job exited %d, want 0:\n%s", code, out)
	}
	if !strings.Contains(out, fmt.Sprintf("coordinator on %s (127.0.0.1:%d)", s.host, port)) {
		t.Errorf("job output does not name the coordinator's address 127.0.0.1:%d:\n%s", port, out)
	}
	// The node host's address is what its name resolves to, as the batch
	// script computes it.
	addr := "127.0.0.1"
	if raw, err := exec.Command("getent", "ahostsv4", s.host).Output(); err == nil && len(strings.Fields(string(raw))) > 0 {
		addr = strings.Fields(string(raw))[0]
	}
	assertTrained(t, out, runDir, map[string]string{s.host + "-0": addr, s.host + "-1": addr})
	assertNothingLeft(t, e, nil, nil, 10*time.Second)
}
