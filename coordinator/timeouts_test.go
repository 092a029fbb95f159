package coordinator

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/internal/clustertest"
)

// TestJobCarriesStepTimeout: the job tells nodes the coordinator's step
// deadline, from which a node's commit wait is derived (issue 11, defect
// 14: survivors of a silent rank must not give up before the coordinator
// aborts the step).
func TestJobCarriesStepTimeout(t *testing.T) {
	f := clustertest.NewFixture(t, clustertest.Options{
		Label: fmt.Sprintf("timeouts-%d", os.Getpid()), MinNodes: 1, MaxNodes: 1,
		ModelConfig: `{"model_type":"bert","vocab_size":30522,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"max_position_embeddings":64}`,
		TrainLines:  16, EvalLines: 8,
		Model: "  task: classification\n  num_labels: 2\n  init: random\n",
		Train: "  epochs: 1\n  global_batch: 8\n  micro_batch: 4\n",
	})
	cfg, err := config.Load(filepath.Join(f.Dir, "cluster.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AllReduce.Timeout = 45 * time.Second
	c, err := New(Options{Config: cfg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := time.Duration(c.job.StepTimeoutMS)*time.Millisecond, 2*45*time.Second+30*time.Second; got != want {
		t.Errorf("job step timeout %s, want %s (the coordinator's stepTimeout)", got, want)
	}
}
