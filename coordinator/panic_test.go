package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/internal/clustertest"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestPanicExitCode(t *testing.T) {
	err := PanicError("boom")
	if ExitCode(err) != ExitPanic || ExitPanic == ExitOK || ExitPanic == ExitBadInput {
		t.Fatalf("exit code of a panic: %d", ExitCode(err))
	}
	if !strings.Contains(err.Error(), "panic: boom") || !strings.Contains(err.Error(), "goroutine") {
		t.Fatalf("panic error lacks the value or the stack: %v", err)
	}
}

// TestPanicReachesNodesAsFailure: a panic in the run loop (injected after
// step 3) makes Run return an ExitPanic error, and the two nodes, real
// processes, hear that the run failed and exit non-zero.
func TestPanicReachesNodesAsFailure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	label := fmt.Sprintf("panic-%d", os.Getpid())
	f := clustertest.NewFixture(t, clustertest.Options{
		Label: label, MinNodes: 2, MaxNodes: 2,
		ModelConfig: `{"model_type":"bert","vocab_size":30522,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"max_position_embeddings":64}`,
		TrainLines:  96, EvalLines: 30,
		Model: "  task: classification\n  num_labels: 2\n  init: random\n",
		Train: "  epochs: 2\n  global_batch: 8\n  micro_batch: 3\n  optimizer: sgd\n  lr: 0.5\n",
	})
	nodeBin := clustertest.Build(t, "./internal/gotrainer/gonode")[0]
	cfg, err := config.Load(filepath.Join(f.Dir, "cluster.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var log syncBuf
	c, err := New(Options{Config: cfg, Log: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	testHookCommitted = func(step int) {
		if step == 3 {
			panic("injected fault after step 3")
		}
	}
	defer func() { testHookCommitted = nil }()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var gossip string
	for deadline := time.Now().Add(20 * time.Second); gossip == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := regexp.MustCompile(`gossip=(\S+)`).FindStringSubmatch(log.String()); m != nil {
			gossip = m[1]
		}
	}
	if gossip == "" {
		t.Fatalf("coordinator did not come up:\n%s", log.String())
	}
	var nodes []*clustertest.Proc
	for i := range 2 {
		name := fmt.Sprintf("%s-n%d", label, i)
		nodes = append(nodes, clustertest.Start(t, ctx, f.Dir, []string{"GONODE_STEP_DELAY=10ms"}, nodeBin, "join", "--coordinator", gossip, "--key-file", f.Key,
			"--bind", "127.0.0.1:0", "--name", name, "--label", label, "--cache-dir", filepath.Join(f.Dir, "cache-"+name), "--join-timeout", "10s"))
	}
	select {
	case err = <-done:
	case <-time.After(90 * time.Second):
		t.Fatalf("Run did not return after the panic:\n%s", log.String())
	}
	var e *Error
	if !errors.As(err, &e) || e.Code != ExitPanic || !strings.Contains(err.Error(), "injected fault") {
		t.Fatalf("Run returned %v, want an ExitPanic error naming the panic", err)
	}
	for i, p := range nodes {
		if code := p.Wait(t, 30*time.Second); code == 0 {
			t.Errorf("node %d exit 0 after the coordinator panicked", i)
		}
		if !strings.Contains(p.Text(), "the coordinator stopped the run") {
			t.Errorf("node %d was not told the run failed:\n%s", i, p.Text())
		}
	}
}
