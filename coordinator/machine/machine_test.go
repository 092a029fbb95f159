package machine

import (
	"slices"
	"testing"
)

// TestRecycleKeepsMessages: a recycled array carries the next Ready's
// messages, and recycling while messages are queued loses none of them.
func TestRecycleKeepsMessages(t *testing.T) {
	m, err := New(Config{MinNodes: 2, Samples: 8, GlobalBatch: 2, Epochs: 1, Resumed: -1, SettleTicks: 1, WaitTicks: 100,
		FormTicks: 10, SyncTicks: 10, StepTicks: 10, EvalTicks: 10, CheckpointTicks: 10, ExportTicks: 10, DrainTicks: 10})
	if err != nil {
		t.Fatal(err)
	}
	m.Step(Event{Kind: Join, Node: "a", Session: 1, Ring: "ra", Applied: -1})
	first := m.Ready().Msgs
	m.Advance()
	if len(first) == 0 {
		t.Fatal("a join queued no message")
	}
	grown := slices.Grow(first, 64)
	m.Recycle(grown)
	if &grown[:1][0] != &m.out.Msgs[:1][0] {
		t.Fatal("the recycled array was not kept")
	}
	m.Step(Event{Kind: Join, Node: "b", Session: 2, Ring: "rb", Applied: -1})
	m.Recycle(make([]Msg, 0, 128)) // messages are queued: ignored
	rd := m.Ready()
	if len(rd.Msgs) != 1 || rd.Msgs[0].Node != "b" || rd.Msgs[0].Kind != Job {
		t.Fatalf("after recycling, b's join queued %v, want its job", rd.Msgs)
	}
}
