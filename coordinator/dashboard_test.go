package coordinator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/ringtune/ringtune/coordinator/dash"
	"github.com/ringtune/ringtune/internal/headless"
)

// The live dashboard of a real run (a coordinator and three node
// processes, one of them killed mid-run): /status follows the run, and the
// page, rendered by headless Chromium, draws its charts with uPlot (axes with
// tick labels, both generations marked on the time axis, the evaluation)
// and lists every node with its state and last step's phases.
func TestDashboard(t *testing.T) {
	chromium, err := headless.Find()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	label := fmt.Sprintf("dash-%d", os.Getpid())
	f := newFixture(t, label, 3, 3, "")
	// Many epochs, so that the run is still going while the browser
	// renders; the test ends it.
	yaml := strings.Replace(f.YAML, "  epochs: 2\n", "  epochs: 100\n", 1)
	if yaml == f.YAML {
		t.Fatal("fixture has no 'epochs: 2' line to replace")
	}
	f.Write(t, yaml+"metrics:\n  dashboard: 127.0.0.1:0\n  address: 127.0.0.1:0\n")
	c := runCluster(t, ctx, f, 3, []string{"GONODE_STEP_DELAY=40ms"})
	url := c.Coord.WaitFor(t, `msg=dashboard url=(\S+)`, 20*time.Second)[1]
	promURL := c.Coord.WaitFor(t, `msg=metrics url=(\S+)`, 20*time.Second)[1]

	get := func(u string) (int, http.Header, []byte) {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header, b
	}
	code, _, page := get(url)
	if code != http.StatusOK || !strings.Contains(string(page), "<title>ringtune</title>") || !strings.Contains(string(page), `src="static/uplot/uPlot.iife.min.js"`) {
		t.Fatalf("GET %s: %d, not the dashboard page:\n%s", url, code, page)
	}
	if code, _, _ := get(url + "nope"); code != http.StatusNotFound {
		t.Errorf("GET %snope: %d, want 404", url, code)
	}
	for path, want := range map[string]string{"static/uplot/uPlot.iife.min.js": "text/javascript", "static/uplot/uPlot.min.css": "text/css", "static/dashboard.js": "text/javascript"} {
		code, h, body := get(url + path)
		if code != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), want) || len(body) == 0 {
			t.Errorf("GET %s: %d %q, %d bytes; want 200 %s", path, code, h.Get("Content-Type"), len(body), want)
		}
	}

	status := func() dash.Status {
		t.Helper()
		code, _, body := get(url + "status")
		var s dash.Status
		if code != http.StatusOK {
			t.Fatalf("GET status: %d %s", code, body)
		}
		if err := json.Unmarshal(body, &s); err != nil {
			t.Fatalf("status is not JSON: %v\n%s", err, body)
		}
		return s
	}
	waitStatus := func(what string, ok func(dash.Status) bool) dash.Status {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); ; {
			s := status()
			if ok(s) {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("status never showed %s: %+v", what, s)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitStatus("3 committed steps", func(s dash.Status) bool { return s.Applied >= 3 })
	victim := fmt.Sprintf("%s-n2", label)
	if err := c.Nodes[2].Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Generation 2, the first evaluation (end of epoch 0, step 12) and
	// step reports of generation 2.
	s := waitStatus("generation 2 training past the first evaluation", func(s dash.Status) bool {
		return s.Generation == 2 && s.WorldSize == 2 && s.EvalStep >= 12 && s.Applied >= s.EvalStep+2 &&
			len(s.Generations) == 2 && s.Applied >= s.Generations[1].Step+2
	})
	if s.Run == "" || s.Task != "classification" || s.Total != 1200 || s.Lost != 1 || s.Aborted < 1 {
		t.Errorf("status does not describe the run: %+v", s)
	}
	h := s.History
	if len(h.T) != s.Applied || len(h.Step) != len(h.T) || len(h.Loss) != len(h.T) || len(h.Rate) != len(h.T) || h.Step[len(h.Step)-1] != s.Applied {
		t.Errorf("history is not one point per committed step (%d): %+v", s.Applied, h)
	}
	for i, l := range h.Loss {
		if !(l > 0) || (i > 0 && !(h.Rate[i] > 0)) || (i > 0 && h.T[i] < h.T[i-1]) {
			t.Errorf("history point %d: t %v loss %v samples/s %v", i, h.T[i], l, h.Rate[i])
		}
	}
	if len(s.Evals.T) < 1 || s.Evals.Step[0] != 12 || !(s.Evals.Metrics["accuracy"][0] >= 0) || !(s.Evals.Metrics["loss"][0] > 0) {
		t.Errorf("evaluation history: %+v", s.Evals)
	}
	if g := s.Generations; g[0].Gen != 1 || g[0].Size != 3 || g[1].Gen != 2 || g[1].Size != 2 || !(g[1].T > g[0].T) {
		t.Errorf("generation marks: %+v", g)
	}
	rows := map[string]dash.Node{}
	for _, n := range s.NodeTable {
		rows[n.ID] = n
	}
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("%s-n%d", label, i)
		n, ok := rows[id]
		switch {
		case !ok:
			t.Errorf("node table lacks %s: %+v", id, s.NodeTable)
		case id == victim:
			if n.State != dash.StateLost || n.Rank != -1 {
				t.Errorf("killed node: %+v", n)
			}
		case n.State != dash.StateTraining || n.Rank < 0 || n.Step < s.Generations[1].Step:
			t.Errorf("surviving node: %+v", n)
		default:
			// Every rank runs two micro-batches a step here, each slowed
			// by 40 ms: a lower bound that only a real measurement meets.
			if !(n.Metrics["compute_ms"] >= 80) || !(n.Metrics["exposed_comm_ms"] > 0) || !(n.Metrics["apply_ms"] > 0) || !(n.Metrics["rss_mb"] > 1) {
				t.Errorf("node %s step metrics: %v", id, n.Metrics)
			}
		}
	}

	// The same step reports as Prometheus series, the lost node's dropped.
	_, _, prom := get(promURL)
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("%s-n%d", label, i)
		m := regexp.MustCompile(`(?m)^ringtune_node_last_step\{metric="compute_ms",node="` + regexp.QuoteMeta(id) + `"\} (\S+)$`).FindSubmatch(prom)
		switch {
		case id == victim && m != nil:
			t.Errorf("/metrics keeps the lost node %s: %s", id, m[0])
		case id != victim && m == nil:
			t.Errorf("/metrics lacks the compute time of %s:\n%s", id, prom)
		case id != victim:
			if v, err := strconv.ParseFloat(string(m[1]), 64); err != nil || v < 80 {
				t.Errorf("/metrics: %s", m[0])
			}
		}
	}
	for _, want := range []string{`ringtune_node_last_step{metric="rss_mb",node="` + label + `-n0"}`, "ringtune_nodes_lost_total 1", "ringtune_generation 2"} {
		if !strings.Contains(string(prom), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	doc, dom, err := headless.DumpDOM(ctx, chromium, url, headless.Options{ProfileDir: t.TempDir(), Budget: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	checkDashboardDOM(t, doc, label, victim)
	if t.Failed() {
		t.Logf("the DOM Chromium rendered:\n%s", dom)
	}
}

// checkDashboardDOM checks the page as Chromium rendered it mid-run, after
// the node victim was killed.
func checkDashboardDOM(t *testing.T, doc *html.Node, label, victim string) {
	t.Helper()
	byID := func(id string) *html.Node {
		n := headless.ByID(doc, id)
		if n == nil {
			t.Fatalf("rendered page has no #%s", id)
		}
		return n
	}
	if e := strings.TrimSpace(headless.Text(byID("err"))); e != "" {
		t.Errorf("page shows an error: %s", e)
	}
	if sub := headless.Text(byID("sub")); !strings.Contains(sub, "generation 2") {
		t.Errorf("subtitle %q does not name generation 2", sub)
	}
	if st := headless.Text(byID("step")); !regexp.MustCompile(`^\d+ / 1200$`).MatchString(st) {
		t.Errorf("step card %q", st)
	}
	clock := regexp.MustCompile(`^\d\d:\d\d:\d\d(\.\d{3})?$`)
	for id, want := range map[string]struct{ axes, series string }{
		"chart-loss": {"time|loss", "train loss|eval loss"},
		"chart-rate": {"time|samples/s", "samples/s"},
		"chart-eval": {"time|accuracy / macro_f1", "accuracy|macro f1"},
	} {
		fig := byID(id)
		roots := headless.All(fig, func(n *html.Node) bool { return headless.HasClass(n, "uplot") })
		if len(roots) != 1 {
			t.Errorf("#%s: %d uPlot charts, want 1", id, len(roots))
			continue
		}
		u := roots[0]
		if len(headless.All(u, headless.Tag("canvas"))) == 0 {
			t.Errorf("#%s: no canvas", id)
		}
		if got := headless.Attr(fig, "data-axes"); got != want.axes {
			t.Errorf("#%s: axes labelled %q, want %q", id, got, want.axes)
		}
		// A fast run spans a few seconds: one tick can be all there is room for.
		xt := strings.Fields(headless.Attr(u, "data-ticks-0"))
		if len(xt) < 1 {
			t.Errorf("#%s: time axis has %d tick labels %v", id, len(xt), xt)
		}
		for _, v := range xt {
			if !clock.MatchString(v) {
				t.Errorf("#%s: time tick %q is not a clock time", id, v)
			}
		}
		yt := strings.Fields(headless.Attr(u, "data-ticks-1"))
		if len(yt) < 2 {
			t.Errorf("#%s: y axis has %d tick labels %v", id, len(yt), yt)
		}
		for _, v := range yt {
			if _, err := strconv.ParseFloat(v, 64); err != nil {
				t.Errorf("#%s: y tick %q is not a number", id, v)
			}
		}
		if m, _ := strconv.Atoi(headless.Attr(u, "data-gen-marks")); m != 2 {
			t.Errorf("#%s: %d generation marks drawn, want 2 (data-gen-marks=%q)", id, m, headless.Attr(u, "data-gen-marks"))
		}
		legend := headless.Text(u)
		for _, s := range strings.Split(want.series, "|") {
			if !strings.Contains(legend, s) {
				t.Errorf("#%s: legend lacks %q: %q", id, s, legend)
			}
		}
	}
	var gens []string
	for _, li := range headless.All(byID("gens"), headless.Tag("li")) {
		gens = append(gens, headless.Attr(li, "data-gen"))
	}
	if strings.Join(gens, ",") != "1,2" {
		t.Errorf("generation list %v, want 1,2", gens)
	}

	head := headless.Attr(byID("nodes-head"), "data-cols")
	cols := strings.Split(head, "|")
	for _, want := range []string{"rank", "node", "state", "step", "compute ms", "exposed comm ms", "apply ms", "RSS MB"} {
		if !strings.Contains("|"+head+"|", "|"+want+"|") {
			t.Errorf("node table columns %q lack %q", head, want)
		}
	}
	trs := headless.All(byID("nodes-body"), headless.Tag("tr"))
	if len(trs) != 3 {
		t.Fatalf("node table has %d rows, want 3", len(trs))
	}
	ranks := map[string]bool{}
	for _, tr := range trs {
		id, state := headless.Attr(tr, "data-node"), headless.Attr(tr, "data-state")
		var cells []string
		for _, td := range headless.All(tr, headless.Tag("td")) {
			cells = append(cells, headless.Text(td))
		}
		if len(cells) != len(cols) || !strings.HasPrefix(id, label+"-n") || cells[1] != id || cells[2] != state {
			t.Errorf("row %v (node %q, state %q) does not match columns %v", cells, id, state, cols)
			continue
		}
		if id == victim {
			if state != dash.StateLost || cells[0] != "–" {
				t.Errorf("killed node's row: %v", cells)
			}
			continue
		}
		if state != dash.StateTraining {
			t.Errorf("surviving node's row: %v", cells)
		}
		ranks[cells[0]] = true
		for i := 3; i < len(cells); i++ {
			if v, err := strconv.ParseFloat(cells[i], 64); err != nil || math.IsNaN(v) {
				t.Errorf("row %s: %s %q is not a number", id, cols[i], cells[i])
			}
		}
	}
	if !ranks["0"] || !ranks["1"] {
		t.Errorf("surviving ranks shown %v, want 0 and 1", ranks)
	}
}
