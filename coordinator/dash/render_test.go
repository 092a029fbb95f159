package dash_test

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/ringtune/ringtune/coordinator/dash"
	"github.com/ringtune/ringtune/internal/headless"
)

// render serves b and returns the page as headless Chromium leaves it.
func render(t *testing.T, b *dash.Board) (*html.Node, string) {
	t.Helper()
	h, err := b.Handler()
	if err != nil {
		t.Fatal(err)
	}
	return renderHandler(t, h)
}

func renderHandler(t *testing.T, h http.Handler) (*html.Node, string) {
	t.Helper()
	chromium, err := headless.Find()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	doc, dom, err := headless.DumpDOM(ctx, chromium, srv.URL+"/", headless.Options{ProfileDir: t.TempDir(), Budget: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return doc, dom
}

func text(t *testing.T, doc *html.Node, id string) string {
	t.Helper()
	n := headless.ByID(doc, id)
	if n == nil {
		t.Fatalf("page has no #%s", id)
	}
	return strings.TrimSpace(headless.Text(n))
}

// What the page shows of a run that has not committed a step: no charts,
// no error.
func TestPageBeforeTheFirstStep(t *testing.T) {
	b := dash.New("r1", "classification", 40)
	b.Connected("a")
	doc, dom := render(t, b)
	if e := text(t, doc, "err"); e != "" {
		t.Errorf("page shows an error: %s", e)
	}
	if n := len(headless.All(doc, func(n *html.Node) bool { return headless.HasClass(n, "uplot") })); n != 0 {
		t.Errorf("%d charts drawn with no data", n)
	}
	if s := text(t, doc, "chart-loss"); !strings.Contains(s, "no committed step yet") {
		t.Errorf("loss chart placeholder: %q", s)
	}
	if s := text(t, doc, "step"); s != "0 / 40" {
		t.Errorf("step card %q", s)
	}
	rows := headless.All(headless.ByID(doc, "nodes-body"), headless.Tag("tr"))
	if len(rows) != 1 || headless.Attr(rows[0], "data-state") != dash.StateJoined {
		t.Errorf("node rows: %d", len(rows))
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}
}

// A masked-LM run's perplexity gets its own (log) axis; a diverged step's
// NaN loss leaves a gap, not an error; and metrics that the overlap and
// sharded-optimizer work add to the step reports get columns, known ones
// in their place and unknown ones after, labelled from their names.
func TestPageShowsWhateverTheBoardHolds(t *testing.T) {
	b := dash.New("r2", "masked_lm", 100)
	for _, id := range []string{"a", "b", "c"} {
		b.Connected(id)
	}
	b.World(1, []string{"b", "a"}) // c is a spare
	for i := 1; i <= 30; i++ {
		loss := 10 / float64(i)
		if i == 17 {
			loss = math.NaN()
		}
		b.Step(i, 0, loss, 64, 32)
		if i%10 == 0 {
			b.Eval(i, map[string]float64{"loss": loss, "perplexity": math.Exp(loss), "count": 2000})
		}
		time.Sleep(2 * time.Millisecond) // distinct times on the axis
	}
	b.NodeStep("a", 29, map[string]float64{"compute_ms": 12.25, "exposed_comm_ms": 3, "overlapped_comm_ms": 9, "apply_ms": 1.5, "rss_mb": 812.4, "optimizer_mb": 64, "bucket_wait_ms": 0.5})
	b.NodeStep("b", 29, map[string]float64{"compute_ms": 13})
	doc, dom := render(t, b)
	defer func() {
		if t.Failed() {
			t.Logf("DOM:\n%s", dom)
		}
	}()
	if e := text(t, doc, "err"); e != "" {
		t.Errorf("page shows an error: %s", e)
	}
	eval := headless.ByID(doc, "chart-eval")
	if got := headless.Attr(eval, "data-axes"); got != "time|perplexity" {
		t.Errorf("eval chart axes %q, want time|perplexity", got)
	}
	if s := text(t, doc, "lasteval-name") + " " + text(t, doc, "lasteval"); s != "eval perplexity 1.396" {
		t.Errorf("last eval card %q", s)
	}
	if headless.Attr(headless.ByID(doc, "chart-loss"), "data-axes") != "time|loss" {
		t.Errorf("loss chart not drawn")
	}
	// The run spans about a second: the time axis still gets several
	// ticks, labelled to the millisecond.
	for _, u := range headless.All(doc, func(n *html.Node) bool { return headless.HasClass(n, "uplot") }) {
		ticks := strings.Fields(headless.Attr(u, "data-ticks-0"))
		if len(ticks) < 2 || !strings.Contains(ticks[0], ".") {
			t.Errorf("time ticks %v, want two or more with milliseconds", ticks)
		}
	}
	if s := text(t, doc, "loss"); s != "0.3333" {
		t.Errorf("loss card %q", s)
	}
	head := headless.Attr(headless.ByID(doc, "nodes-head"), "data-cols")
	if want := "rank|node|state|step|compute ms|exposed comm ms|overlapped comm ms|apply ms|RSS MB|optimizer MB|bucket wait ms"; head != want {
		t.Errorf("columns\n%q, want\n%q", head, want)
	}
	var rows []string
	for _, tr := range headless.All(headless.ByID(doc, "nodes-body"), headless.Tag("tr")) {
		var cells []string
		for _, td := range headless.All(tr, headless.Tag("td")) {
			cells = append(cells, headless.Text(td))
		}
		rows = append(rows, strings.Join(cells, " "))
	}
	want := []string{
		"0 b training 29 13.0 – – – – – –",
		"1 a training 29 12.3 3.0 9.0 1.5 812 64 0.5",
		"– c spare – – – – – – – –",
	}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("rows\n%s\nwant\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
}

// When /status fails the page says so, with the reason, and keeps polling.
func TestPageSaysWhenStatusFails(t *testing.T) {
	h, err := dash.New("r3", "classification", 10).Handler()
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "the test's coordinator is down", http.StatusServiceUnavailable)
	})
	doc, dom := renderHandler(t, mux)
	if e := text(t, doc, "err"); !strings.Contains(e, "coordinator unreachable") || !strings.Contains(e, "503") || !strings.Contains(e, "the test's coordinator is down") {
		t.Errorf("error line %q\n%s", e, dom)
	}
}
