package coordinator_test

// Hardening with real processes (issue 12): an authenticated session that
// sends messages out of phase cannot disturb a run; a replayed token or
// handshake, the reserved id and a plaintext client are refused; nodes exit
// non-zero when the coordinator dies.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/internal/clustertest"
)

// rogue is a process that holds the cluster key and is a gossip member
// announcing itself as a node, but speaks the control protocol by hand.
type rogue struct {
	name string
	key  auth.Key
	tls  *auth.TLSConfigs
	grpc string
}

func newRogue(t *testing.T, c gossipAddrs, keyFile, label, name string) *rogue {
	t.Helper()
	key, err := auth.LoadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := auth.DerivedTLS(key)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := control.Meta{ID: name, Role: control.RoleNode, GRPC: "127.0.0.1:1"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	ml, err := control.NewMemberlist(control.GossipConfig{Name: name, Bind: "127.0.0.1:0", Label: label, Key: key, Delegate: control.StaticMeta(meta)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ml.Shutdown() })
	if _, err := ml.Join([]string{c.gossip}); err != nil {
		t.Fatal(err)
	}
	waitMember(t, ml, control.CoordinatorID)
	return &rogue{name: name, key: key, tls: tc, grpc: c.grpc}
}

type gossipAddrs struct{ gossip, grpc string }

func waitMember(t *testing.T, ml *memberlist.Memberlist, name string) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, m := range ml.Members() {
			if m.Name == name {
				return
			}
		}
	}
	t.Fatalf("gossip member %s not seen", name)
}

// recording wraps a session stream and keeps what it sent.
type recording struct {
	control.Stream
	sent []*control.Msg
}

func (r *recording) Send(m *control.Msg) error { r.sent = append(r.sent, m); return r.Stream.Send(m) }

// open opens a session with dial options opts (nil: the key's own).
func (r *rogue) open(t *testing.T, ctx context.Context, opts ...grpc.DialOption) (control.Stream, func()) {
	t.Helper()
	var cc *grpc.ClientConn
	var err error
	if opts == nil {
		cc, err = control.Dial(r.grpc, r.key, r.tls.Client)
	} else {
		cc, err = grpc.NewClient(r.grpc, append(opts, grpc.WithDefaultCallOptions(grpc.CallContentSubtype(control.CodecName)))...)
	}
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	st, err := control.OpenSession(sctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	return st, func() { cancel(); cc.Close() }
}

// TestOutOfPhaseMessagesLeaveTheRunCompleting: an authenticated session
// (key, TLS, handshake, gossip member) sends, throughout a 2-node run,
// every kind of node message with wrong generations, steps and request ids,
// among them issue 12's unsolicited evalres. The coordinator logs and drops
// them, and the run completes with every sample of each epoch committed.
func TestOutOfPhaseMessagesLeaveTheRunCompleting(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("phase-%d", os.Getpid()), 2, 2, "")
	c := runCluster(t, ctx, f, 2, []string{"GONODE_STEP_DELAY=10ms"})
	r := newRogue(t, gossipAddrs{c.Gossip, c.GRPC}, f.Key, f.Label, "rogue")
	st, closeSession := r.open(t, ctx)
	defer closeSession()
	if err := control.ClientHandshake(st, r.key, control.Hello{ID: r.name, Applied: -1}); err != nil {
		t.Fatalf("handshake of a key holder: %v", err)
	}
	if m, err := st.Recv(); err != nil || m.Type != control.TypeJob {
		t.Fatalf("after the handshake: %v %v, want the job", m, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // drain what the coordinator sends (the stop at the end)
		defer wg.Done()
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
		}
	}()
	junk := []*control.Msg{
		{Type: control.TypeEval, Gen: 1, Req: 1, Eval: &control.EvalSums{Count: 1}},
		{Type: control.TypeEval, Gen: 0, Eval: &control.EvalSums{}},
		{Type: control.TypeReduced, Gen: 1, Step: 3, Reduced: &control.Reduced{Count: 1}},
		{Type: control.TypeFailed, Gen: 1, Step: 2},
		{Type: control.TypeDigest, Gen: 1, Step: 1, Sum: "00"},
		{Type: control.TypeReady, Gen: 1, Ready: &control.Ready{}},
		{Type: control.TypeLoaded, Gen: 1, Step: 1},
		{Type: control.TypeExported, Gen: 1, Req: 2, Files: []control.FileInfo{{Name: "model.safetensors", Size: 1}}},
		{Type: control.TypeExported, Gen: 1, Req: 2, Files: []control.FileInfo{{Name: "../escape", Size: 1}}},
		{Type: control.TypeHello, Hello: &control.Hello{ID: "n9", Nonce: make([]byte, auth.NonceSize)}},
		{Type: control.TypeStep, Gen: 1, Count: 1},
	}
	sent := 0
	for i := 0; ; i++ {
		select {
		case <-c.Coord.Done():
		case <-time.After(20 * time.Millisecond):
			m := *junk[i%len(junk)]
			m.V = control.Version
			if st.Send(&m) == nil {
				sent++
			}
			continue
		}
		break
	}
	if code := c.Coord.Wait(t, time.Second); code != 0 {
		t.Fatalf("coordinator exit %d with an out-of-phase sender", code)
	}
	for i, p := range c.Nodes {
		if code := p.Wait(t, 10*time.Second); code != 0 {
			t.Errorf("node %d exit %d", i, code)
		}
	}
	closeSession()
	wg.Wait()
	out := c.Coord.Text()
	if sent < len(junk) {
		t.Fatalf("only %d junk messages went out before the run ended", sent)
	}
	for _, want := range []string{
		`bad message from node" node=rogue type=evalres`,
		`epoch complete" epoch=0 committed=96 missing=0`,
		`epoch complete" epoch=1 committed=96 missing=0`,
		`replicas identical" applied=24`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator log lacks %q", want)
		}
	}
	if strings.Contains(out, "panic") {
		t.Error("coordinator log mentions a panic")
	}
}

// replayToken sends one token, minted once, with every call: a captured
// token.
type replayToken struct{ tok string }

func (r replayToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{auth.MetadataKey: r.tok}, nil
}
func (replayToken) RequireTransportSecurity() bool { return true }

// TestReplayAndReservedIDRefused: against a real coordinator, a captured
// token opens no second session, a recorded handshake replayed on a new
// session is refused, the id "coordinator" and an id that is no gossip
// member are refused, and a plaintext client of the right key cannot talk
// to the TLS control server.
func TestReplayAndReservedIDRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("replay-%d", os.Getpid()), 1, 1, "")
	coordBin, _ := build(t)
	coord := clustertest.Start(t, ctx, f.Dir, nil, coordBin, "--config", "cluster.yaml")
	m := coord.WaitFor(t, `gossip=(\S+) grpc=(\S+)`, 20*time.Second)
	r := newRogue(t, gossipAddrs{m[1], m[2]}, f.Key, f.Label, "rogue")

	// A token used once is refused the second time.
	tok, err := r.key.Token(control.SessionMethod, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(r.tls.Client)), grpc.WithPerRPCCredentials(replayToken{tok})}
	st, done := r.open(t, ctx, opts...)
	rec := &recording{Stream: st}
	if err := control.ClientHandshake(rec, r.key, control.Hello{ID: r.name, Applied: -1}); err != nil {
		t.Fatalf("first use of the token: %v", err)
	}
	if m, err := st.Recv(); err != nil || m.Type != control.TypeJob {
		t.Fatalf("after the handshake: %v %v, want the job", m, err)
	}
	done()
	st, done = r.open(t, ctx, opts...)
	_, err = st.Recv()
	done()
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("replayed token: got %v, want Unauthenticated naming the reuse", err)
	}

	// A recorded handshake (hello, then auth) on a fresh session fails:
	// the coordinator's nonce is new.
	if len(rec.sent) != 2 || rec.sent[1].Type != control.TypeAuth {
		t.Fatalf("recorded %d messages, want hello and auth", len(rec.sent))
	}
	st, done = r.open(t, ctx)
	if err := st.Send(rec.sent[0]); err != nil {
		t.Fatal(err)
	}
	if ch, err := st.Recv(); err != nil || ch.Type != control.TypeChallenge {
		t.Fatalf("want a challenge, got %v %v", ch, err)
	}
	if err := st.Send(rec.sent[1]); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	done()
	if err == nil || !strings.Contains(err.Error(), "replayed handshake") {
		t.Fatalf("replayed handshake: got %v, want a refusal", err)
	}

	// Reserved and unknown ids.
	for id, want := range map[string]string{
		control.CoordinatorID: "reserved for the coordinator",
		"stranger":            "not a node of the gossip cluster",
	} {
		st, done := r.open(t, ctx)
		err := control.ClientHandshake(st, r.key, control.Hello{ID: id, Applied: -1})
		if err == nil {
			_, err = st.Recv()
		}
		done()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("id %q: got %v, want an error containing %q", id, err, want)
		}
	}

	// Plaintext with the right key: the TLS server refuses the transport.
	cc, err := control.Dial(m[2], r.key, nil)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if pst, err := control.OpenSession(sctx, cc); err == nil {
		_, err = pst.Recv()
		if status.Code(err) != codes.Unavailable {
			t.Errorf("plaintext client: got %v, want Unavailable", err)
		}
	}
	cc.Close()

	out := coord.Text()
	if strings.Contains(out, `node connected" node=coordinator`) || strings.Contains(out, `node connected" node=stranger`) {
		t.Fatal("coordinator accepted a reserved or unknown id")
	}
	if n := strings.Count(out, "node connected"); n != 1 {
		t.Errorf("%d sessions connected, want exactly the first one", n)
	}
}

// TestNodesFailWhenCoordinatorDies: a coordinator killed mid-run and not
// restarted is a failure for every node, never a clean exit: the nodes try
// to rejoin for --rejoin-timeout, then exit non-zero saying so.
func TestNodesFailWhenCoordinatorDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("cdie-%d", os.Getpid()), 2, 2, "")
	f.NodeArgs = []string{"--rejoin-timeout", "3s"}
	c := runCluster(t, ctx, f, 2, []string{"GONODE_STEP_DELAY=15ms"})
	c.Coord.WaitFor(t, `replicas identical" applied=3 `, 60*time.Second)
	if err := c.Coord.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i, p := range c.Nodes {
		if code := p.Wait(t, 60*time.Second); code == 0 {
			t.Errorf("node %d exit 0 after the coordinator died", i)
		}
		out := p.Text()
		for _, want := range []string{"session with the coordinator lost; joining again", "could not rejoin within --rejoin-timeout 3s"} {
			if !strings.Contains(out, want) {
				t.Errorf("node %d log lacks %q", i, want)
			}
		}
	}
}
