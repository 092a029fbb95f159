package agent

import (
	"context"
	"testing"
	"time"

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

// TestRepliesEchoRequestID: every reply on the wire carries the request id
// and generation of the request it answers: the join (ready), the step
// (reduced), the digest asked with the commit, the evaluation and the
// export; the coordinator machine matches replies by them.
func TestRepliesEchoRequestID(t *testing.T) {
	s, _, _ := fuzzSession(t, phaseSetUp)
	rec := &recStream{}
	s.st = rec
	s.applied = 5
	steps := []struct {
		in   *control.Msg
		want string // type of the reply
	}{
		{&control.Msg{V: control.Version, Type: control.TypeGen, Gen: 2, Req: 11, World: &control.World{Generation: 2, Peers: []string{"127.0.0.1:1"}, IDs: []string{"n0"}, Applied: 5}}, control.TypeReady},
		{&control.Msg{V: control.Version, Type: control.TypeStep, Gen: 2, Req: 12, Step: 5, Count: 3, Batches: []*control.Batch{{Size: 3}}}, control.TypeReduced},
		{&control.Msg{V: control.Version, Type: control.TypeCommit, Gen: 2, Req: 12, Step: 5, Count: 3, Digest: true}, control.TypeDigest},
		{&control.Msg{V: control.Version, Type: control.TypeEvalReq, Gen: 2, Req: 13, Batches: []*control.Batch{{Size: 2}}}, control.TypeEval},
		{&control.Msg{V: control.Version, Type: control.TypeExport, Gen: 2, Req: 14}, control.TypeExported},
	}
	for _, st := range steps {
		rec.sent = nil
		if err := s.expect(st.in); err != nil {
			t.Fatalf("%s: %v", st.in.Type, err)
		}
		if err := s.handle(st.in); err != nil {
			t.Fatalf("%s: %v", st.in.Type, err)
		}
		if len(rec.sent) != 1 {
			t.Fatalf("%s: sent %d messages, want one %s", st.in.Type, len(rec.sent), st.want)
		}
		got := rec.sent[0]
		if got.Type != st.want || got.Req != st.in.Req || got.Gen != 2 {
			t.Fatalf("%s answered with %s req %d gen %d, want %s req %d gen 2", st.in.Type, got.Type, got.Req, got.Gen, st.want, st.in.Req)
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("%s reply does not validate: %v", got.Type, err)
		}
	}
	if s.applied != 6 {
		t.Fatalf("applied %d after the commit of step 5", s.applied)
	}
}

// TestMachineCommitDeadlineFollowsJob: the machine's commit deadline is the
// node's commit timeout raised past the job's step timeout, in ticks.
func TestMachineCommitDeadlineFollowsJob(t *testing.T) {
	s, _, _ := fuzzSession(t, phaseFresh)
	s.a.cfg.CommitTimeout = 2 * time.Minute
	job := fuzzJob()
	job.StepTimeoutMS = (150 * time.Second).Milliseconds()
	if err := s.handle(&control.Msg{V: control.Version, Type: control.TypeJob, Job: job}); err != nil {
		t.Fatal(err)
	}
	if got, want := s.m.CommitTicks(), ticksOf(180*time.Second); got != want {
		t.Fatalf("commit deadline %d ticks, want %d (3m)", got, want)
	}
}
