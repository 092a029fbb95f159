package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
)

// metrics are the coordinator's Prometheus series. A nil *metrics (no
// metrics.address) ignores every update.
type metrics struct {
	reg                              *prometheus.Registry
	applied, epoch, loss, rate, size prometheus.Gauge
	gen                              prometheus.Gauge
	samples, aborts, losses, commits prometheus.Counter
	evals                            *prometheus.GaugeVec
	// nodes is what each rank measured of its last step
	// (control.Reduced.Metrics), labelled by node and metric name.
	nodes *prometheus.GaugeVec
	// phases are the last committed step's communication and apply times
	// (the slowest rank's), in milliseconds, by phase.
	phases   *prometheus.GaugeVec
	optBytes *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	g := func(name, help string) prometheus.Gauge {
		x := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ringtune", Name: name, Help: help})
		m.reg.MustRegister(x)
		return x
	}
	ct := func(name, help string) prometheus.Counter {
		x := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ringtune", Name: name, Help: help})
		m.reg.MustRegister(x)
		return x
	}
	m.applied = g("committed_steps", "Optimizer steps committed so far.")
	m.epoch = g("epoch", "Current epoch (0-based).")
	m.loss = g("train_loss", "Mean training loss of the last committed step.")
	m.rate = g("samples_per_second", "Training samples per second since the start.")
	m.size = g("world_size", "Ranks in the current generation (0 while forming).")
	m.gen = g("generation", "Current generation number.")
	m.samples = ct("samples_total", "Training samples in committed steps.")
	m.commits = ct("steps_committed_total", "Committed steps.")
	m.aborts = ct("steps_aborted_total", "Aborted steps.")
	m.losses = ct("nodes_lost_total", "Nodes lost (session broken, gossip dead, or silent).")
	m.evals = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "ringtune", Name: "eval", Help: "Last evaluation metrics."}, []string{"metric"})
	m.reg.MustRegister(m.evals)
	m.optBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "ringtune", Name: "optimizer_bytes",
		Help: "Optimizer state held per node at its last reduced step (train.shard_optimizer zero1 holds 2/N of it)."}, []string{"node"})
	m.reg.MustRegister(m.optBytes)
	m.nodes = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "ringtune", Name: "node_last_step",
		Help: "What each rank measured of its last step, by metric: compute_ms, exposed_comm_ms, apply_ms (of the step before), rss_mb, and any other a node reports."},
		[]string{"node", "metric"})
	m.reg.MustRegister(m.nodes)
	m.phases = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "ringtune", Name: "step_phase_ms",
		Help: "Last committed step, slowest rank, in ms: comm (ring busy), overlapped (comm hidden behind backward), exposed (wait after backward), apply (the rank's previous optimizer step)."}, []string{"phase"})
	m.reg.MustRegister(m.phases)
	return m
}

// stepPhases are the communication and apply times of one committed step,
// each the maximum over ranks: the slowest rank is what the step waits for.
type stepPhases struct {
	CommMS, OverlappedMS, ExposedMS, ApplyMS float64
	Buckets                                  int
}

// phasesOf folds the ranks' reports of a step.
func phasesOf(reduced map[string]*control.Reduced) stepPhases {
	var p stepPhases
	for _, r := range reduced {
		p.CommMS = max(p.CommMS, r.CommMS)
		p.OverlappedMS = max(p.OverlappedMS, r.OverlappedMS)
		p.ExposedMS = max(p.ExposedMS, r.ExposedMS)
		p.ApplyMS = max(p.ApplyMS, r.ApplyMS)
		p.Buckets = max(p.Buckets, r.Buckets)
	}
	return p
}

func (m *metrics) stepPhases(p stepPhases) {
	if m != nil {
		m.phases.WithLabelValues("comm").Set(p.CommMS)
		m.phases.WithLabelValues("overlapped").Set(p.OverlappedMS)
		m.phases.WithLabelValues("exposed").Set(p.ExposedMS)
		m.phases.WithLabelValues("apply").Set(p.ApplyMS)
	}
}

// optimizer records the optimizer state node holds.
func (m *metrics) optimizer(node string, bytes int64) {
	if m != nil && bytes > 0 {
		m.optBytes.WithLabelValues(node).Set(float64(bytes))
	}
}

func (m *metrics) step1(applied, epoch int, loss, rate float64, samples int) {
	m.applied.Set(float64(applied))
	m.epoch.Set(float64(epoch))
	m.loss.Set(loss)
	m.rate.Set(rate)
	m.samples.Add(float64(samples))
	m.commits.Inc()
}

func (m *metrics) step(applied, epoch int, loss, rate float64, samples int) {
	if m != nil {
		m.step1(applied, epoch, loss, rate, samples)
	}
}

func (m *metrics) world(size int, gen uint64) {
	if m != nil {
		m.size.Set(float64(size))
		m.gen.Set(float64(gen))
	}
}

func (m *metrics) abort() {
	if m != nil {
		m.aborts.Inc()
	}
}

// lost counts a lost node and drops its series, so that the node label
// does not grow without bound over a long run with churn.
func (m *metrics) lost(id string) {
	if m != nil {
		m.losses.Inc()
		m.nodes.DeletePartialMatch(prometheus.Labels{"node": id})
	}
}

func (m *metrics) node(id string, vals map[string]float64) {
	if m != nil {
		for k, v := range vals {
			m.nodes.WithLabelValues(id, k).Set(v)
		}
	}
}

func (m *metrics) eval(k string, v float64) {
	if m != nil {
		m.evals.WithLabelValues(k).Set(v)
	}
}

// serveMetrics serves /metrics on metrics.address until the returned stop.
func (c *Coordinator) serveMetrics() (func(), error) {
	c.metrics = newMetrics()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(c.metrics.reg, promhttp.HandlerOpts{}))
	return c.serveHTTP("metrics", "metrics.address", c.cfg.Metrics.Address, "/metrics", mux)
}

// serveHTTP serves h on addr (config key key, named in errors) until the
// returned stop, and logs the URL of path under name.
func (c *Coordinator) serveHTTP(name, key, addr, path string, h http.Handler) (func(), error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen on %s: %w", key, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error(name+" server", "err", err)
		}
	}()
	c.log.Info(name, "url", "http://"+lis.Addr().String()+path)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}

// Metrics turns summed evaluation counts into metrics: loss and accuracy
// and macro F1 for classification, MSE for regression, loss and perplexity
// for causal LM.
func Metrics(task data.Task, numLabels int, s control.EvalSums) map[string]float64 {
	n := math.Max(s.Count, 1)
	out := map[string]float64{"loss": s.LossSum / n, "count": s.Count}
	switch task {
	case data.Classification, data.TokenClassification:
		// For token classification the counts are labelled tokens, so
		// accuracy is token accuracy.
		out["accuracy"] = s.Correct / n
		if len(s.Confusion) == numLabels*numLabels {
			f1 := 0.0
			for k := 0; k < numLabels; k++ {
				tp := s.Confusion[k*numLabels+k]
				var fp, fn float64
				for j := 0; j < numLabels; j++ {
					if j != k {
						fp += s.Confusion[j*numLabels+k]
						fn += s.Confusion[k*numLabels+j]
					}
				}
				if d := 2*tp + fp + fn; d > 0 {
					f1 += 2 * tp / d
				}
			}
			out["macro_f1"] = f1 / float64(numLabels)
		}
	case data.Regression:
		out["mse"] = s.SqErr / n
	case data.CausalLM, data.MaskedLM:
		out["perplexity"] = math.Exp(s.LossSum / n)
	}
	return out
}

// progress shows the run's progress: a redrawn bar on a terminal, a plain
// line every few seconds otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	total int
	start time.Time
	last  time.Time
}

func newProgress(w io.Writer, total int) *progress {
	if w == nil {
		return nil
	}
	p := &progress{w: w, total: total, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) update(step, epoch int, loss, rate float64) {
	if p == nil {
		return
	}
	el := time.Since(p.start)
	eta := time.Duration(0)
	if step > 0 {
		eta = time.Duration(float64(el) / float64(step) * float64(p.total-step)).Round(time.Second)
	}
	if p.tty {
		const width = 30
		fill := width * step / max(p.total, 1)
		bar := strings.Repeat("█", fill) + strings.Repeat("░", width-fill)
		fmt.Fprintf(p.w, "\r%s step %d/%d epoch %d loss %.4f %.1f samples/s ETA %s ", bar, step, p.total, epoch, loss, rate, eta)
		return
	}
	if step == p.total || time.Since(p.last) >= 5*time.Second {
		p.last = time.Now()
		fmt.Fprintf(p.w, "step %d/%d epoch %d loss %.4f samples/s %.1f eta %s\n", step, p.total, epoch, loss, rate, eta)
	}
}

func (p *progress) note(s string) {
	if p == nil {
		return
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s\n", s)
		return
	}
	fmt.Fprintln(p.w, s)
}

func (p *progress) finish() {
	if p != nil && p.tty {
		fmt.Fprintln(p.w)
	}
}
