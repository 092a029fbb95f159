package coordinator

import (
	_ "embed"
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// dashboard keeps a snapshot of the run for the live page on
// metrics.dashboard. The coordinator's loop updates it; HTTP handlers read
// it under the lock. A nil *dashboard ignores updates.
type dashboard struct {
	mu sync.Mutex
	st dashStatus
}

// dashStatus is the JSON of /status.
type dashStatus struct {
	Run          string             `json:"run"`
	Task         string             `json:"task"`
	Applied      int                `json:"applied"`
	Total        int                `json:"total"`
	Epoch        int                `json:"epoch"`
	Loss         float64            `json:"loss"`
	SamplesPerS  float64            `json:"samples_per_s"`
	Generation   uint64             `json:"generation"`
	WorldSize    int                `json:"world_size"`
	Nodes        []string           `json:"nodes"`
	Aborted      int                `json:"aborted_steps"`
	Lost         int                `json:"lost_nodes"`
	Eval         map[string]float64 `json:"eval,omitempty"`
	EvalStep     int                `json:"eval_step"`
	LossHistory  [][2]float64       `json:"loss_history"` // [step, loss]
	UpdatedUnixS int64              `json:"updated_unix_s"`
}

// maxHistory bounds the loss history the page plots; older points are
// thinned by half when it fills, so long runs keep their whole shape.
const maxHistory = 2000

func newDashboard(run, task string, total int) *dashboard {
	return &dashboard{st: dashStatus{Run: run, Task: task, Total: total, Nodes: []string{}}}
}

func (d *dashboard) update(f func(*dashStatus)) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	f(&d.st)
	d.st.UpdatedUnixS = time.Now().Unix()
}

func (d *dashboard) step(applied, epoch int, loss, rate float64) {
	d.update(func(s *dashStatus) {
		s.Applied, s.Epoch, s.Loss, s.SamplesPerS = applied, epoch, loss, rate
		s.LossHistory = append(s.LossHistory, [2]float64{float64(applied), loss})
		if len(s.LossHistory) > maxHistory {
			half := s.LossHistory[:0]
			for i := 0; i < len(s.LossHistory); i += 2 {
				half = append(half, s.LossHistory[i])
			}
			s.LossHistory = half
		}
	})
}

func (d *dashboard) world(gen uint64, ids []string) {
	d.update(func(s *dashStatus) {
		s.Generation, s.WorldSize, s.Nodes = gen, len(ids), append([]string{}, ids...)
	})
}

func (d *dashboard) abort() { d.update(func(s *dashStatus) { s.Aborted++ }) }
func (d *dashboard) lost()  { d.update(func(s *dashStatus) { s.Lost++ }) }

func (d *dashboard) eval(applied int, res map[string]float64) {
	d.update(func(s *dashStatus) {
		s.EvalStep, s.Eval = applied, make(map[string]float64, len(res))
		for k, v := range res {
			s.Eval[k] = v
		}
	})
}

func (d *dashboard) snapshot() dashStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.st
	s.Nodes = append([]string{}, d.st.Nodes...)
	s.LossHistory = append([][2]float64{}, d.st.LossHistory...)
	return s
}

//go:embed dashboard.html
var dashboardHTML []byte

// serveDashboard serves the live page (/) and its data (/status) on
// metrics.dashboard until the returned stop.
func (c *Coordinator) serveDashboard() (func(), error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(dashboardHTML)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(c.dash.snapshot())
	})
	return c.serveHTTP("dashboard", "metrics.dashboard", c.cfg.Metrics.Dashboard, "/", mux)
}
