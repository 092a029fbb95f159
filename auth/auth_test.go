package auth

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func mustKey(t *testing.T) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "cluster.key")
	k, err := WriteKeyFile(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadKeyFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(k) {
		t.Fatal("loaded key differs from written key")
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := WriteKeyFile(p); err == nil {
		t.Fatal("WriteKeyFile overwrote an existing key file")
	}

	cases := map[string]struct{ content, want string }{
		"empty":   {"  \n", "is empty"},
		"short":   {Key(make([]byte, 16)).Encode(), "holds a 16-byte key"},
		"garbage": {"not base64!!\n", "not valid base64"},
	}
	for name, c := range cases {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKeyFile(f)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), f) {
			t.Errorf("%s: got %v, want error naming %s containing %q", name, err, f, c.want)
		}
	}
	missing := filepath.Join(dir, "nope")
	if _, err := LoadKeyFile(missing); err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "`coordinator keygen "+missing+"`") {
		t.Errorf("missing file: got %v", err)
	}
}

func TestTokenVerify(t *testing.T) {
	k, other := mustKey(t), mustKey(t)
	now := time.Now()
	tok, err := k.Token("/a.B/C", now)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Verify("/a.B/C", tok, now); err != nil {
		t.Fatalf("valid token refused: %v", err)
	}
	for name, c := range map[string]struct {
		key    Key
		method string
		tok    string
		at     time.Time
		want   string
	}{
		"other key":    {other, "/a.B/C", tok, now, "different cluster key"},
		"other method": {k, "/a.B/D", tok, now, "does not match"},
		"expired":      {k, "/a.B/C", tok, now.Add(MaxSkew + time.Minute), "clock"},
		"malformed":    {k, "/a.B/C", "hello", now, "malformed"},
		"bad time":     {k, "/a.B/C", "rt1.x.00.00", now, "malformed token time"},
		"bad mac hex":  {k, "/a.B/C", "rt1." + strconv.FormatInt(now.Unix(), 10) + ".00.zz", now, "MAC"},
	} {
		if err := c.key.Verify(c.method, c.tok, c.at); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", name, err, c.want)
		}
	}
	if err := Key(make([]byte, 8)).Validate(); err == nil {
		t.Error("8-byte key validated")
	}
}

// TestInterceptors runs a real gRPC server (the standard health service, which
// has a unary and a streaming method) behind ServerOptions.
func TestInterceptors(t *testing.T) {
	k := mustKey(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerOptions(k, nil)...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(lis)
	defer srv.Stop()
	defer hs.Shutdown()

	dial := func(opts ...grpc.DialOption) healthpb.HealthClient {
		cc, err := grpc.NewClient(lis.Addr().String(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return healthpb.NewHealthClient(cc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	good := dial(DialOptions(k, nil)...)
	if _, err := good.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("unary with key: %v", err)
	}
	ws, err := good.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Recv(); err != nil {
		t.Fatalf("stream with key: %v", err)
	}

	for name, cl := range map[string]healthpb.HealthClient{
		"missing": dial(grpc.WithTransportCredentials(insecure.NewCredentials())),
		"wrong":   dial(DialOptions(mustKey(t), nil)...),
	} {
		_, err := cl.Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s credential, unary: got %v, want Unauthenticated", name, err)
		}
		s, err := cl.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s credential, stream: got %v, want Unauthenticated", name, err)
		}
	}
}

func TestSubKey(t *testing.T) {
	k := mustKey(t)
	a, b := k.SubKey("purpose a"), k.SubKey("purpose b")
	if len(a) != 32 || string(a) == string(b) {
		t.Fatalf("sub-keys for different purposes must differ and be 32 bytes: %x %x", a, b)
	}
	if string(a) != string(k.SubKey("purpose a")) {
		t.Fatal("SubKey is not deterministic")
	}
	if string(mustKey(t).SubKey("purpose a")) == string(a) {
		t.Fatal("different cluster keys gave the same sub-key")
	}
	// The token MAC key is the sub-key of its documented purpose, so tokens
	// minted before SubKey existed still verify.
	if string(k.macKey()) != string(k.SubKey("ringtune grpc token v1")) {
		t.Fatal("token MAC key changed")
	}
}

// fixedToken sends the same token with every call, as an attacker replaying
// a captured one would.
type fixedToken string

func (f fixedToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{MetadataKey: string(f)}, nil
}
func (fixedToken) RequireTransportSecurity() bool { return false }

// TestTokenSingleUse: a token accepted once is refused the second time, on
// the same server, for the same method, well within MaxSkew; a fresh token
// of the same key still passes.
func TestTokenSingleUse(t *testing.T) {
	k := mustKey(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerOptions(k, nil)...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(lis)
	defer srv.Stop()
	defer hs.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	const method = "/grpc.health.v1.Health/Check"
	tok, err := k.Token(method, time.Now().Add(-4*time.Minute)) // minted 4 minutes ago, as in issue 12
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(fixedToken(tok)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cl := healthpb.NewHealthClient(cc)
	if _, err := cl.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("first use of a valid token: %v", err)
	}
	for i := range 3 {
		_, err := cl.Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "already used") {
			t.Fatalf("replay %d of the token: got %v, want Unauthenticated naming the reuse", i+1, err)
		}
	}
	good, err := grpc.NewClient(lis.Addr().String(), DialOptions(k, nil)...)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	for range 3 {
		if _, err := healthpb.NewHealthClient(good).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("fresh tokens after a replay: %v", err)
		}
	}
}

// TestProof: a proof verifies only for its own role, binding, nonces,
// purpose and key.
func TestProof(t *testing.T) {
	k, other := mustKey(t), mustKey(t)
	a, _ := NewNonce()
	b, _ := NewNonce()
	if len(a) != NonceSize || string(a) == string(b) {
		t.Fatal("nonces not fresh")
	}
	p := k.Proof("p", "node", []byte("n1"), a, b)
	if !k.CheckProof("p", "node", []byte("n1"), a, b, p) {
		t.Fatal("proof does not verify")
	}
	c, _ := NewNonce()
	for name, ok := range map[string]bool{
		"other key":     other.CheckProof("p", "node", []byte("n1"), a, b, p),
		"other role":    k.CheckProof("p", "coordinator", []byte("n1"), a, b, p),
		"other binding": k.CheckProof("p", "node", []byte("n2"), a, b, p),
		"other nonce":   k.CheckProof("p", "node", []byte("n1"), a, c, p),
		"other purpose": k.CheckProof("q", "node", []byte("n1"), a, b, p),
		"truncated":     k.CheckProof("p", "node", []byte("n1"), a, b, p[:16]),
	} {
		if ok {
			t.Errorf("proof verifies with %s", name)
		}
	}
}
