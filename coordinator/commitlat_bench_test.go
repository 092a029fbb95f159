package coordinator_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/internal/clustertest"
)

// Commit latency figures (scripts/bench.sh control): measured steps after
// the warm-up ones.
const (
	commitLatSteps  = 200
	commitLatWarmup = 10
)

// BenchmarkCommitLatency is the commit latency added per step with 3 real
// nodes: a coordinator process and 3 node processes (the pure-Go test node,
// whose agent, control plane and ring are the real node's) on loopback,
// training the bag-of-words fixture for commitLatWarmup+commitLatSteps
// steps. Each node logs, at debug level, the wall clock at which it sent a
// step's reduced and took its commit; on one host those clocks are one. A
// step's latency is from the last rank's reduced to the last node's commit:
// the reduced's way to the coordinator, the coordinator's commit handling,
// and the commit's way back. The figure is the median over the measured
// steps (and the 90th percentile).
//
// The peer, measured in the same run: the raw round trip of the same
// messages on a control session over loopback gRPC between two processes,
// with the cluster's authentication and TLS, a server that answers every
// reduced with a commit at once: the floor under the commit latency, which
// crosses between processes twice too. One op is the whole run:
// use -benchtime 1x.
func BenchmarkCommitLatency(b *testing.B) {
	for i := 0; i < b.N; i++ {
		lat := commitLatencies(b)
		rtt := rawRoundTrips(b, commitLatSteps)
		med, p90 := quantile(lat, 0.5), quantile(lat, 0.9)
		rmed := quantile(rtt, 0.5)
		b.ReportMetric(med, "commit-ms")
		b.ReportMetric(p90, "commit-p90-ms")
		b.ReportMetric(rmed, "rtt-ms")
		b.ReportMetric(quantile(rtt, 0.9), "rtt-p90-ms")
		b.ReportMetric(float64(len(lat)), "steps")
		b.ReportMetric(med/rmed, "ratio")
	}
}

// stepTimingRe reads a node's debug line of one step's moments.
var stepTimingRe = regexp.MustCompile(`msg="step timing" .*? step=(\d+) .*reduced_at_us=(\d+) commit_at_us=(\d+)`)

// commitLatencies runs the cluster and returns the measured steps'
// latencies in ms.
func commitLatencies(b *testing.B) []float64 {
	b.Helper()
	bins := clustertest.Build(b, "./cmd/coordinator", "./internal/gotrainer/gonode")
	total := commitLatWarmup + commitLatSteps
	// 96 lines, global batch 3 (one sample per node): 32 steps an epoch;
	// no digests, so that each commit is the commit alone.
	f := clustertest.NewFixture(b, clustertest.Options{
		Label: "commitlat", MinNodes: 3, MaxNodes: 3,
		ModelConfig: fixtureModelConfig,
		TrainLines:  96, EvalLines: 30,
		Model: "  task: classification\n  num_labels: 2\n  init: random\n",
		Train: fmt.Sprintf("  epochs: %d\n  max_steps: %d\n  global_batch: 3\n  micro_batch: 1\n  digest_every: 0\n  optimizer: sgd\n  lr: 0.1\n",
			total/32+1, total),
	})
	f.NodeArgs = []string{"--log-level", "debug"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := clustertest.RunCluster(b, ctx, f, bins[0], bins[1], 3, nil)
	if code := c.Coord.Wait(b, 4*time.Minute); code != 0 {
		b.Fatalf("coordinator exit %d:\n%s", code, c.Coord.Text())
	}
	// reduced[step][node], commit[step][node] in µs.
	reduced := map[int][]int64{}
	commit := map[int][]int64{}
	for i, p := range c.Nodes {
		if code := p.Wait(b, 30*time.Second); code != 0 {
			b.Fatalf("node %d exit %d", i, code)
		}
		for _, m := range stepTimingRe.FindAllStringSubmatch(p.Text(), -1) {
			g, _ := strconv.Atoi(m[1])
			r, _ := strconv.ParseInt(m[2], 10, 64)
			k, _ := strconv.ParseInt(m[3], 10, 64)
			// An aborted and retried step logs once, when it commits.
			reduced[g] = append(reduced[g], r)
			commit[g] = append(commit[g], k)
		}
	}
	var lat []float64
	for g := commitLatWarmup; g < total; g++ {
		if len(reduced[g]) != 3 {
			b.Fatalf("step %d: %d of 3 nodes logged its timing (the nodes' debug log changed? want %q)", g, len(reduced[g]), stepTimingRe)
		}
		last := slices.Max(reduced[g])
		lat = append(lat, float64(slices.Max(commit[g])-last)/1000)
	}
	return lat
}

// rawRoundTrips measures n round trips on a control session over loopback
// gRPC between this process and another (the cluster's authentication and
// derived TLS): this process sends a reduced, the other, the test binary
// running TestRawRoundTripServer, answers with a commit. It returns them in
// ms.
func rawRoundTrips(b *testing.B, n int) []float64 {
	b.Helper()
	keyFile := filepath.Join(b.TempDir(), "cluster.key")
	key, err := auth.WriteKeyFile(keyFile)
	if err != nil {
		b.Fatal(err)
	}
	tc, err := auth.DerivedTLS(key)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRawRoundTripServer$")
	srv.Env = append(os.Environ(), rttKeyEnv+"="+keyFile)
	stdin, err := srv.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := srv.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = stdin.Close() // the server's cue to stop
		if err := srv.Wait(); err != nil {
			b.Logf("raw round trip server: %v", err)
		}
	}()
	addr := ""
	sc := bufio.NewScanner(stdout)
	for addr == "" && sc.Scan() {
		addr, _ = strings.CutPrefix(sc.Text(), "rtt-server ")
	}
	if addr == "" {
		b.Fatalf("the raw round trip server printed no address (%v)", sc.Err())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	cc, err := control.Dial(addr, key, tc.Client)
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	st, err := control.OpenSession(ctx, cc)
	if err != nil {
		b.Fatal(err)
	}
	// What a node's reduced carries besides the gradient: its report and
	// step figures.
	red := control.Reduced{Count: 1, Samples: 1, LossSum: 0.69, Metrics: map[string]float64{
		control.MetricComputeMS: 1, control.MetricExposedCommMS: 1, control.MetricOverlappedCommMS: 0, control.MetricCommMS: 1, control.MetricRSSMB: 100}}
	var out []float64
	for i := 0; i < n+commitLatWarmup; i++ {
		start := time.Now()
		if err := st.Send(&control.Msg{V: control.Version, Type: control.TypeReduced, Gen: 1, Step: i, Reduced: &red}); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			b.Fatal(err)
		}
		if i >= commitLatWarmup {
			out = append(out, float64(time.Since(start).Microseconds())/1000)
		}
	}
	return out
}

// rttKeyEnv names the key file of the raw round trip server.
const rttKeyEnv = "RINGTUNE_RTT_SERVER_KEY"

// TestRawRoundTripServer is the other process of BenchmarkCommitLatency's
// raw round trip (skipped unless that benchmark starts it): a control
// server on loopback that answers every reduced with a commit at once. It
// prints its address and serves until its stdin closes.
func TestRawRoundTripServer(t *testing.T) {
	keyFile := os.Getenv(rttKeyEnv)
	if keyFile == "" {
		t.Skip("the helper process of BenchmarkCommitLatency")
	}
	key, err := auth.LoadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := auth.DerivedTLS(key)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(control.ServerOptions(key, tc.Server)...)
	control.Register(gs, func(st control.Stream) error {
		for {
			m, err := st.Recv()
			if err != nil {
				return nil // the client hung up
			}
			if err := st.Send(&control.Msg{V: control.Version, Type: control.TypeCommit, Gen: m.Gen, Step: m.Step, Count: 3}); err != nil {
				return err
			}
		}
	})
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	fmt.Printf("rtt-server %s\n", lis.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	gs.Stop()
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		t.Fatalf("raw round trip server: %v", err)
	}
}

// quantile is the q-quantile of xs (nearest rank).
func quantile(xs []float64, q float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}
