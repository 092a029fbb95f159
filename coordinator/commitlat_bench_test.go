package coordinator_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ringtune/ringtune/internal/clustertest"
)

// commitPeer is another coordinator binary to measure in the same run (for
// instance one built from an older commit); empty: none.
var commitPeer = flag.String("commit.peer", "", "coordinator binary measured as the peer of BenchmarkCommitLatency")

// BenchmarkCommitLatency (scripts/bench.sh commit) measures what the
// coordinator adds to every step on loopback with 3 real node processes:
// for each step, the shortest commit_wait_ms of the ranks (the time from a
// rank's reduced report to its commit; the last rank to report waits for
// nothing but the coordinator and two loopback hops), and its median over
// 204 steps. The run's other costs do not enter. One op is one run.
func BenchmarkCommitLatency(b *testing.B) {
	bins := clustertest.Build(b, "./cmd/coordinator", "./internal/gotrainer/gonode")
	coords := map[string]string{"coordinator": bins[0]}
	if *commitPeer != "" {
		coords["peer"] = *commitPeer
	}
	for _, name := range []string{"coordinator", "peer"} {
		bin, ok := coords[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				med, n := commitLatencyRun(b, bin, bins[1])
				b.ReportMetric(med, "commit-ms-median")
				b.ReportMetric(float64(n), "steps")
			}
		})
	}
}

// commitLatencyRun runs the 3-node bag-of-words fixture for 17 epochs and
// returns the median over steps of the ranks' shortest commit wait.
func commitLatencyRun(b *testing.B, coordBin, nodeBin string) (float64, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f := clustertest.NewFixture(b, clustertest.Options{
		Label: fmt.Sprintf("lat-%d", os.Getpid()), MinNodes: 3, MaxNodes: 3,
		ModelConfig: fixtureModelConfig, TrainLines: 96, EvalLines: 8,
		Model: "  task: classification\n  num_labels: 2\n  init: random\n",
		Train: "  epochs: 17\n  global_batch: 8\n  micro_batch: 3\n  optimizer: sgd\n  lr: 0.1\n",
	})
	f.NodeArgs = []string{"--log-level", "debug"}
	c := clustertest.RunCluster(b, ctx, f, coordBin, nodeBin, 3, nil)
	if code := c.Coord.Wait(b, 4*time.Minute); code != 0 {
		b.Fatalf("coordinator exit %d", code)
	}
	re := regexp.MustCompile(`msg="step timing" node=\S+ step=(\d+) .*commit_wait_ms=([0-9.]+)`)
	best := map[int]float64{}
	for _, p := range c.Nodes {
		p.Wait(b, 30*time.Second)
		for _, m := range re.FindAllStringSubmatch(p.Text(), -1) {
			step, _ := strconv.Atoi(m[1])
			w, _ := strconv.ParseFloat(m[2], 64)
			if old, ok := best[step]; !ok || w < old {
				best[step] = w
			}
		}
	}
	if len(best) < 200 {
		b.Fatalf("%d steps timed, want at least 200", len(best))
	}
	ws := make([]float64, 0, len(best))
	for _, w := range best {
		ws = append(ws, w)
	}
	slices.Sort(ws)
	return ws[len(ws)/2], len(ws)
}
