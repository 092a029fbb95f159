package control

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/auth"
)

// handshakeServer serves sessions over real gRPC with TLS derived from key;
// each session's ServerHandshake result goes to results, and a session that
// passes gets a job.
func handshakeServer(t *testing.T, key auth.Key) (string, <-chan error) {
	return serveSessions(t, key, false)
}

// serveSessions is handshakeServer; with hold, a session stays open after
// the job until the node ends it (or the keepalive does), as a spare's.
func serveSessions(t *testing.T, key auth.Key, hold bool) (string, <-chan error) {
	t.Helper()
	tc, err := auth.DerivedTLS(key)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan error, 8)
	gs := grpc.NewServer(ServerOptions(key, tc.Server)...)
	Register(gs, func(st Stream) error {
		first, err := st.Recv()
		if err != nil {
			return err
		}
		err = ServerHandshake(st, key, first)
		results <- err
		if err != nil {
			return err
		}
		if err := st.Send(&Msg{V: Version, Type: TypeJob, Job: &Job{RunID: "r"}}); err != nil || !hold {
			return err
		}
		_, err = st.Recv()
		return err
	})
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String(), results
}

func session(t *testing.T, addr string, key auth.Key) (Stream, func()) {
	t.Helper()
	tc, err := auth.DerivedTLS(key)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := Dial(addr, key, tc.Client)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := OpenSession(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	return st, func() { cancel(); cc.Close() }
}

func TestHandshake(t *testing.T) {
	key, _ := auth.GenerateKey()
	addr, results := handshakeServer(t, key)
	st, done := session(t, addr, key)
	defer done()
	if err := ClientHandshake(st, key, Hello{ID: "n1"}); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if err := <-results; err != nil {
		t.Fatalf("server side: %v", err)
	}
	if m, err := st.Recv(); err != nil || m.Type != TypeJob {
		t.Fatalf("after the handshake: %v %v", m, err)
	}
}

// TestHandshakeRefusals: a node answering with a proof of another id, or
// one that sends something else than auth, is refused by the coordinator;
// a coordinator whose proof is wrong is refused by the node.
func TestHandshakeRefusals(t *testing.T) {
	key, _ := auth.GenerateKey()
	addr, results := handshakeServer(t, key)

	// The proof binds the id: a proof made for n2 does not open n1.
	st, done := session(t, addr, key)
	nonce, _ := auth.NewNonce()
	if err := st.Send(&Msg{V: Version, Type: TypeHello, Hello: &Hello{ID: "n1", Nonce: nonce, Proto: Version}}); err != nil {
		t.Fatal(err)
	}
	ch, err := st.Recv()
	if err != nil || ch.Type != TypeChallenge {
		t.Fatalf("want a challenge, got %v %v", ch, err)
	}
	_ = st.Send(&Msg{V: Version, Type: TypeAuth, Proof: key.Proof(sessionPurpose, "node", []byte("n2"), nonce, ch.Nonce)})
	if err := <-results; err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("proof for another id: got %v", err)
	}
	// Reflecting the coordinator's own proof back does not pass either.
	_, err = st.Recv()
	done()
	if err == nil {
		t.Error("session open after a refused proof")
	}
	st, done = session(t, addr, key)
	_ = st.Send(&Msg{V: Version, Type: TypeHello, Hello: &Hello{ID: "n1", Nonce: nonce, Proto: Version}})
	ch, _ = st.Recv()
	_ = st.Send(&Msg{V: Version, Type: TypeAuth, Proof: ch.Proof})
	if err := <-results; err == nil {
		t.Error("the coordinator's own proof, reflected, was accepted")
	}
	done()
	st, done = session(t, addr, key)
	_ = st.Send(&Msg{V: Version, Type: TypeHello, Hello: &Hello{ID: "n1", Nonce: nonce, Proto: Version}})
	_, _ = st.Recv()
	_ = st.Send(&Msg{V: Version, Type: TypeReady, Ready: &Ready{}})
	if err := <-results; err == nil || !strings.Contains(err.Error(), `want "auth"`) {
		t.Errorf("ready instead of auth: got %v", err)
	}
	done()

	// The node checks the coordinator: a challenge with a wrong proof.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(ServerOptions(key, nil)...)
	Register(gs, func(st Stream) error {
		if _, err := st.Recv(); err != nil {
			return err
		}
		n, _ := auth.NewNonce()
		if err := st.Send(&Msg{V: Version, Type: TypeChallenge, Nonce: n, Proof: make([]byte, auth.ProofSize)}); err != nil {
			return err
		}
		_, err := st.Recv()
		return err
	})
	go gs.Serve(lis)
	defer gs.Stop()
	cc, err := Dial(lis.Addr().String(), key, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err = OpenSession(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	if err := ClientHandshake(st, key, Hello{ID: "n1"}); err == nil || !strings.Contains(err.Error(), "coordinator's proof") {
		t.Errorf("wrong coordinator proof: got %v", err)
	}
}

func TestCheckNodeID(t *testing.T) {
	for id, ok := range map[string]bool{"": false, CoordinatorID: false, "n1": true, "coordinator-2": true} {
		if err := CheckNodeID(id); (err == nil) != ok {
			t.Errorf("CheckNodeID(%q) = %v", id, err)
		}
	}
}
