package coordinator

import (
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/coordinator/dash"
)

// dashboard is the live page's state (package dash); nil without
// metrics.dashboard, and a nil one ignores updates.
type dashboard = dash.Board

func newDashboard(run, task string, total int) *dashboard { return dash.New(run, task, total) }

// nodeMetrics is what the dashboard's node table and the Prometheus series
// ringtune_node_last_step show of a rank's step report: the metrics the
// node measured (control.Reduced.Metrics). A typed field added to
// control.Reduced is shown by adding it here under a name ending in _ms or
// _mb (the table labels columns from the name; package dash knows the
// order of compute_ms, exposed_comm_ms, overlapped_comm_ms, comm_ms,
// apply_ms, rss_mb and optimizer_mb).
func nodeMetrics(r *control.Reduced) map[string]float64 {
	out := make(map[string]float64, len(r.Metrics))
	for k, v := range r.Metrics {
		out[k] = v
	}
	return out
}

// serveDashboard serves the live page (/), its files (/static/) and its
// data (/status) on metrics.dashboard until the returned stop.
func (c *Coordinator) serveDashboard() (func(), error) {
	h, err := c.dash.Handler()
	if err != nil {
		return nil, err
	}
	return c.serveHTTP("dashboard", "metrics.dashboard", c.cfg.Metrics.Dashboard, "/", h)
}
