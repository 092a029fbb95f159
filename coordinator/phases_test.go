package coordinator

import (
	"testing"

	"github.com/ringtune/ringtune/control"
)

// TestStepPhases: a step's communication and apply figures are the slowest
// rank's, and reach the step_phase_ms gauges.
func TestStepPhases(t *testing.T) {
	p := phasesOf(map[string]*control.Reduced{
		"a": {CommMS: 10, OverlappedMS: 8, ExposedMS: 2, ApplyMS: 5, Buckets: 7},
		"b": {CommMS: 12, OverlappedMS: 3, ExposedMS: 9, ApplyMS: 4, Buckets: 7},
		"c": {}, // a node that predates the fields
	})
	want := stepPhases{CommMS: 12, OverlappedMS: 8, ExposedMS: 9, ApplyMS: 5, Buckets: 7}
	if p != want {
		t.Fatalf("phases %+v, want %+v", p, want)
	}
	m := newMetrics()
	m.stepPhases(p)
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "ringtune_step_phase_ms" {
			continue
		}
		for _, mt := range f.GetMetric() {
			got[mt.GetLabel()[0].GetValue()] = mt.GetGauge().GetValue()
		}
	}
	for phase, v := range map[string]float64{"comm": 12, "overlapped": 8, "exposed": 9, "apply": 5} {
		if got[phase] != v {
			t.Errorf("ringtune_step_phase_ms{phase=%q} = %v, want %v (all: %v)", phase, got[phase], v, got)
		}
	}
	var nilm *metrics
	nilm.stepPhases(p) // no metrics.address: ignored
}
