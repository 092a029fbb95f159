package coordinator

import (
	"strings"
	"testing"

	"github.com/ringtune/ringtune/control"
)

// TestPullAnswersMatchedToRequest: an answer to a pull counts only from a
// rank the pull went to, once, with the pull's request id (or none, from
// an agent older than the id). Before, any rank's answer counted, so a
// second or unasked answer could end the wait without a stale rank's, and
// syncState then read that rank's missing answer (issue 11, defect 4).
func TestPullAnswersMatchedToRequest(t *testing.T) {
	c, ss, _ := fuzzCoordinator(t, phasePull)
	n0, n1, n2 := ss[0], ss[1], ss[2]
	loaded := func(req int) *control.Msg {
		return &control.Msg{V: control.Version, Type: control.TypeLoaded, Gen: c.gen, Req: req, Step: c.applied}
	}
	refuse := func(s *session, m *control.Msg, want string) {
		t.Helper()
		before := c.snapshot()
		err := c.onMsg(s, m)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("answer from %s (req %d): got %v, want an error containing %q", s.id, m.Req, err, want)
		}
		if c.snapshot() != before {
			t.Fatalf("a refused answer from %s changed state", s.id)
		}
	}
	refuse(n0, loaded(c.pullReq), "was not asked to pull")
	refuse(n1, loaded(c.pullReq-1), "the outstanding pull is request")
	if err := c.onMsg(n1, loaded(c.pullReq)); err != nil {
		t.Fatal(err)
	}
	refuse(n1, loaded(c.pullReq), "second pull answer")
	// An agent that does not echo the id yet.
	if err := c.onMsg(n2, loaded(0)); err != nil {
		t.Fatal(err)
	}
	if len(c.loaded) != 2 || c.loaded["n1"] == nil || c.loaded["n2"] == nil {
		t.Fatalf("answers recorded from %v, want n1 and n2", c.loaded)
	}
}
