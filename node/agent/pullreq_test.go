package agent

import (
	"context"
	"testing"

	"github.com/ringtune/ringtune/control"
)

// recStream is the coordinator's end of a session, keeping what the node
// sends.
type recStream struct{ sent []*control.Msg }

func (s *recStream) Send(m *control.Msg) error   { s.sent = append(s.sent, m); return nil }
func (s *recStream) Recv() (*control.Msg, error) { return nil, context.Canceled }
func (s *recStream) Context() context.Context    { return context.Background() }

// TestPullAnswerEchoesRequestID: the answer to a pull carries the pull's
// request id, which the coordinator matches to the pull it sent (issue 11,
// defect 4). The pull here fails (nothing listens at the source), so the
// failure answer is the one checked; the success answer is built the same
// way.
func TestPullAnswerEchoesRequestID(t *testing.T) {
	s, _, _ := fuzzSession(t, phaseInGen)
	rec := &recStream{}
	s.st = rec
	m := &control.Msg{V: control.Version, Type: control.TypePull, Gen: 2, Req: 42, Pull: &control.Pull{Addr: "127.0.0.1:1", Kind: "state", Step: 5}}
	if err := s.expect(m); err != nil {
		t.Fatal(err)
	}
	if err := s.handle(m); err != nil {
		t.Fatal(err)
	}
	if len(rec.sent) != 1 || rec.sent[0].Type != control.TypeLoaded {
		t.Fatalf("sent %v, want one loaded answer", rec.sent)
	}
	got := rec.sent[0]
	if got.Req != 42 || got.Gen != 2 || got.Error == "" {
		t.Fatalf("loaded answer req %d gen %d error %q, want request 42 of generation 2 with the pull's error", got.Req, got.Gen, got.Error)
	}
}
