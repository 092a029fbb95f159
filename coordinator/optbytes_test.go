package coordinator

import "testing"

// TestOptimizerBytesMetric: the optimizer state each node reports with its
// reduced step is exported per node as ringtune_optimizer_bytes; a node that
// does not report (0) leaves no series.
func TestOptimizerBytesMetric(t *testing.T) {
	m := newMetrics()
	m.optimizer("n0", 5272248)
	m.optimizer("n1", 0)
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range fams {
		if f.GetName() != "ringtune_optimizer_bytes" {
			continue
		}
		found = true
		if len(f.Metric) != 1 || f.Metric[0].GetLabel()[0].GetValue() != "n0" || f.Metric[0].GetGauge().GetValue() != 5272248 {
			t.Fatalf("ringtune_optimizer_bytes: %v", f.Metric)
		}
	}
	if !found {
		t.Fatal("no ringtune_optimizer_bytes series")
	}
	var none *metrics
	none.optimizer("n0", 1) // no metrics.address: ignored
}
