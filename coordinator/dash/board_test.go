package dash

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

// serve serves b's dashboard on loopback.
func serve(t *testing.T, b *Board) *httptest.Server {
	t.Helper()
	h, err := b.Handler()
	if err != nil {
		t.Fatal(err)
	}
	return httptest.NewServer(h)
}

func TestNilBoardIgnoresUpdates(t *testing.T) {
	var b *Board
	b.Step(1, 0, 0.5, 10, 8)
	b.World(1, []string{"a"})
	b.Connected("a")
	b.Lost("a")
	b.Abort()
	b.Eval(1, map[string]float64{"loss": 1})
	b.NodeStep("a", 0, map[string]float64{"compute_ms": 1})
}

// The history keeps one point per commit until MaxHistory, then thins by
// half, always keeping the newest point, and all columns stay aligned.
func TestHistoryIsBounded(t *testing.T) {
	b := New("r", "classification", 10*MaxHistory)
	for i := 1; i <= 3*MaxHistory+7; i++ {
		b.Step(i, 0, float64(i), 1, 8)
	}
	h := b.Snapshot().History
	if n := len(h.T); n > MaxHistory || n < MaxHistory/2 {
		t.Fatalf("%d points kept, want between %d and %d", n, MaxHistory/2, MaxHistory)
	}
	if len(h.Step) != len(h.T) || len(h.Loss) != len(h.T) || len(h.Rate) != len(h.T) {
		t.Fatalf("columns of different lengths: t %d step %d loss %d rate %d", len(h.T), len(h.Step), len(h.Loss), len(h.Rate))
	}
	if last := h.Step[len(h.Step)-1]; last != 3*MaxHistory+7 {
		t.Errorf("newest point is step %d, want %d", last, 3*MaxHistory+7)
	}
	if h.Step[0] > 8 {
		t.Errorf("oldest point is step %d: thinning should keep the start of the run", h.Step[0])
	}
	for i := range h.Step {
		if float64(h.Loss[i]) != float64(h.Step[i]) {
			t.Fatalf("point %d: step %d has loss %v: columns misaligned", i, h.Step[i], h.Loss[i])
		}
		if i > 0 && h.Step[i] <= h.Step[i-1] {
			t.Fatalf("steps out of order at %d: %v", i, h.Step[i-1:i+1])
		}
	}
}

func TestHalveKeepsNewest(t *testing.T) {
	for n := 1; n < 8; n++ {
		xs := make([]int, n)
		for i := range xs {
			xs[i] = i
		}
		got := halve(xs)
		if got[len(got)-1] != n-1 || len(got) != (n+1)/2 {
			t.Errorf("halve(0..%d) = %v", n-1, got)
		}
	}
}

// A NaN loss (a diverged run) encodes as null instead of failing the
// status endpoint, and reads back as NaN.
func TestNonFiniteNumbersAreNull(t *testing.T) {
	b := New("r", "classification", 10)
	b.Step(1, 0, math.NaN(), math.Inf(1), 8)
	srv := serve(t, b)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"loss":null`) || !strings.Contains(string(body), `"samples_per_s":null`) {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var s Status
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(float64(s.Loss)) || !math.IsNaN(float64(s.History.Loss[0])) {
		t.Errorf("null did not read back as NaN: %v %v", s.Loss, s.History.Loss)
	}
}

// The windowed rate is samples over the last RateWindow commits' time,
// null for the first commit.
func TestWindowedRate(t *testing.T) {
	b := New("r", "classification", 100)
	for i := 1; i <= 3*RateWindow; i++ {
		b.Step(i, 0, 1, 0, 8)
	}
	h := b.Snapshot().History
	if !math.IsNaN(float64(h.Rate[0])) {
		t.Errorf("first commit has rate %v, want null", h.Rate[0])
	}
	// The Board's clock is real: with 8 samples per commit and commits
	// microseconds apart, the rate is only known to be positive.
	for i := 1; i < len(h.Rate); i++ {
		if !(h.Rate[i] > 0) {
			t.Errorf("rate %d = %v", i, h.Rate[i])
		}
	}
	if n := len(b.recent); n != RateWindow+1 {
		t.Errorf("rate window holds %d commits, want %d", n, RateWindow+1)
	}
}

// Node states follow connections, generations and losses; the table is in
// rank order, then spares, then lost nodes; lost nodes are bounded.
func TestNodeTable(t *testing.T) {
	b := New("r", "classification", 100)
	for _, id := range []string{"c", "a", "b", "d"} {
		b.Connected(id)
	}
	state := func() map[string]string {
		out := map[string]string{}
		for _, n := range b.Snapshot().NodeTable {
			out[n.ID] = n.State
		}
		return out
	}
	if got := state(); !reflect.DeepEqual(got, map[string]string{"a": StateJoined, "b": StateJoined, "c": StateJoined, "d": StateJoined}) {
		t.Errorf("after connecting: %v", got)
	}
	b.World(1, nil)
	if got := state(); got["a"] != StateForming {
		t.Errorf("while forming: %v", got)
	}
	b.World(1, []string{"c", "a", "b"}) // d is a spare
	b.NodeStep("c", 0, map[string]float64{"compute_ms": 5, "rss_mb": 100, "zeta_mb": 1})
	b.NodeStep("a", 0, map[string]float64{"compute_ms": 6, "exposed_comm_ms": 2})
	b.Lost("b")
	s := b.Snapshot()
	var order []string
	for _, n := range s.NodeTable {
		order = append(order, n.ID+":"+n.State)
	}
	if want := "c:training a:training d:spare b:lost"; strings.Join(order, " ") != want {
		t.Errorf("table %q, want %q", strings.Join(order, " "), want)
	}
	if s.NodeTable[0].Rank != 0 || s.NodeTable[1].Rank != 1 || s.NodeTable[2].Rank != -1 || s.NodeTable[3].Rank != -1 {
		t.Errorf("ranks: %+v", s.NodeTable)
	}
	var cols []string
	for _, c := range s.NodeColumns {
		cols = append(cols, c.Key+"="+c.Label)
	}
	if want := "compute_ms=compute ms exposed_comm_ms=exposed comm ms rss_mb=RSS MB zeta_mb=zeta MB"; strings.Join(cols, " ") != want {
		t.Errorf("columns %q, want %q", strings.Join(cols, " "), want)
	}
	if s.Lost != 1 {
		t.Errorf("lost count %d", s.Lost)
	}
	// A restarted node reconnects under its name: no longer lost.
	b.Connected("b")
	if got := state()["b"]; got != StateJoined {
		t.Errorf("reconnected node is %s", got)
	}
	// Generation 2 without a; a stays connected, so it is a spare.
	b.World(2, []string{"c"})
	if got := state(); got["a"] != StateSpare || got["c"] != StateTraining {
		t.Errorf("generation 2: %v", got)
	}
	g := b.Snapshot().Generations
	if len(g) != 2 || g[0].Gen != 1 || g[0].Size != 3 || g[1].Gen != 2 || g[1].Size != 1 {
		t.Errorf("generation marks %+v", g)
	}
	for i := 0; i < 3*MaxLostNodes; i++ {
		id := "x" + strings.Repeat("y", i)
		b.Connected(id)
		b.Lost(id)
	}
	lost := 0
	for _, n := range b.Snapshot().NodeTable {
		if n.State == StateLost {
			lost++
			if len(n.ID) < 1+2*MaxLostNodes {
				t.Errorf("an old lost node %s was kept over a newer one", n.ID[:8])
			}
		}
	}
	if lost != MaxLostNodes {
		t.Errorf("%d lost nodes kept, want %d", lost, MaxLostNodes)
	}
}

// Evaluations with different metric sets keep aligned columns, with null
// where an evaluation lacked a metric.
func TestEvalHistory(t *testing.T) {
	b := New("r", "classification", 100)
	b.Eval(10, map[string]float64{"loss": 0.5})
	b.Eval(20, map[string]float64{"loss": 0.4, "accuracy": 0.8})
	b.Eval(30, map[string]float64{"accuracy": 0.9})
	e := b.Snapshot().Evals
	if !reflect.DeepEqual(e.Step, []int{10, 20, 30}) {
		t.Fatalf("steps %v", e.Step)
	}
	acc, loss := e.Metrics["accuracy"], e.Metrics["loss"]
	if len(acc) != 3 || len(loss) != 3 || !math.IsNaN(float64(acc[0])) || acc[1] != 0.8 || acc[2] != 0.9 ||
		loss[0] != 0.5 || loss[1] != 0.4 || !math.IsNaN(float64(loss[2])) {
		t.Errorf("metrics %v", e.Metrics)
	}
	for i := 0; i < 2*MaxEvals; i++ {
		b.Eval(40+i, map[string]float64{"loss": 1})
	}
	e = b.Snapshot().Evals
	if len(e.T) > MaxEvals || len(e.Metrics["loss"]) != len(e.T) || len(e.Metrics["accuracy"]) != len(e.T) {
		t.Errorf("after %d evaluations: %d kept, loss %d, accuracy %d", 2*MaxEvals+3, len(e.T), len(e.Metrics["loss"]), len(e.Metrics["accuracy"]))
	}
}

func TestHandlerServesThePageAndFiles(t *testing.T) {
	srv := serve(t, New("r", "classification", 10))
	defer srv.Close()
	for path, want := range map[string]string{
		"/":                               "<title>ringtune</title>",
		"/static/dashboard.js":            "uPlot",
		"/static/uplot/uPlot.iife.min.js": "v1.6.32",
		"/static/uplot/uPlot.min.css":     ".uplot",
		"/static/uplot/LICENSE":           "MIT",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, body lacks %q", path, resp.StatusCode, want)
		}
	}
	for _, path := range []string{"/nope", "/static/nope.js"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, resp.StatusCode)
		}
	}
}

func TestLabel(t *testing.T) {
	for in, want := range map[string]string{"bucket_wait_ms": "bucket wait ms", "optimizer_mb": "optimizer MB", "steps": "steps"} {
		if got := Label(in); got != want {
			t.Errorf("Label(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNumJSON(t *testing.T) {
	for in, want := range map[float64]string{0.1234567891: "0.1234568", 2000: "2000", 1.5e8: "1.5e+08", -3: "-3", 1e-9: "1e-09"} {
		b, err := json.Marshal(Num(in))
		if err != nil || string(b) != want {
			t.Errorf("Num(%v) = %s, %v; want %s", in, b, err, want)
		}
	}
}
