package control

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ringtune/ringtune/auth"
)

// freezer is a loopback TCP proxy that can stop forwarding while keeping
// both connections open: to the node, the coordinator behind it looks
// frozen (SIGSTOP) or partitioned away, not dead, so no FIN or RST ends
// the session.
type freezer struct {
	lis    net.Listener
	mu     sync.Mutex
	frozen bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{lis: lis}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, in, out)
			f.mu.Unlock()
			f.wg.Add(2)
			go f.pipe(out, in)
			go f.pipe(in, out)
		}
	}()
	t.Cleanup(f.close)
	return f
}

// pipe copies src to dst until frozen; then it reads and drops, so the
// sender's writes never block and nothing arrives.
func (f *freezer) pipe(dst, src net.Conn) {
	defer f.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			f.mu.Lock()
			frozen := f.frozen
			f.mu.Unlock()
			if !frozen {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *freezer) freeze() { f.mu.Lock(); f.frozen = true; f.mu.Unlock() }

func (f *freezer) close() {
	f.lis.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// TestIdleSessionEndsWhenCoordinatorFreezes: a node whose session carries
// no message (a spare) learns that the coordinator froze from the
// keepalive, within its time and timeout, and not never (defect 14 of the
// protocol issue: idle nodes had no deadline).
func TestIdleSessionEndsWhenCoordinatorFreezes(t *testing.T) {
	key, _ := auth.GenerateKey()
	addr, results := serveSessions(t, key, true) // a spare's session: a job, then nothing
	proxy := newFreezer(t, addr)
	tc, err := auth.DerivedTLS(key)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := Dial(proxy.lis.Addr().String(), key, tc.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// The session's own context outlasts the test's bound: only the
	// keepalive may end it.
	limit := 6 * (KeepaliveTime + KeepaliveTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 2*limit)
	defer cancel()
	st, err := OpenSession(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	if err := ClientHandshake(st, key, Hello{ID: "spare"}); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if err := <-results; err != nil {
		t.Fatalf("server side: %v", err)
	}
	if m, err := st.Recv(); err != nil || m.Type != TypeJob {
		t.Fatalf("job: %v %v", m, err)
	}
	proxy.freeze()
	ended := make(chan error, 1)
	go func() {
		_, err := st.Recv()
		ended <- err
	}()
	// The bound is generous for a loaded machine; what matters is that the
	// session ends at all: before the keepalive it waited forever.
	select {
	case err := <-ended:
		if err == nil || err == io.EOF || status.Code(err) != codes.Unavailable {
			t.Fatalf("the frozen coordinator's session ended with %v, want a transport error", err)
		}
		t.Logf("session ended: %v", err)
	case <-time.After(limit):
		t.Fatalf("the session with a frozen coordinator still open after %v", limit)
	}
}
