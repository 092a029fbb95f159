package allreduce

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"

	"github.com/ringtune/ringtune/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testKey = func() auth.Key {
	k, err := auth.GenerateKey()
	if err != nil {
		panic(err)
	}
	return k
}()

// listeners opens n loopback listeners and returns them with their addresses.
func listeners(t testing.TB, n int) ([]net.Listener, []string) {
	t.Helper()
	ls := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls[i], addrs[i] = l, l.Addr().String()
	}
	return ls, addrs
}

// transports are the data paths every ring test runs on.
var transports = []Transport{TCP, GRPC, SHM}

// forTransports runs f as a subtest per transport.
func forTransports(t *testing.T, f func(t *testing.T, tr Transport)) {
	for _, tr := range transports {
		t.Run(tr.String(), func(t *testing.T) { f(t, tr) })
	}
}

// newRings builds a ring of n ranks on loopback using transport tr; mod may
// adjust each config.
func newRings(t testing.TB, tr Transport, n int, mod func(*Config)) []*Ring {
	t.Helper()
	ls, addrs := listeners(t, n)
	rings := make([]*Ring, n)
	for i := range rings {
		cfg := Config{Generation: 1, Rank: i, Peers: addrs, Listener: ls[i], Key: testKey, Timeout: 20 * time.Second, Transport: tr}
		if mod != nil {
			mod(&cfg)
		}
		r, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rings[i] = r
	}
	t.Cleanup(func() { closeAll(rings) })
	return rings
}

// closeAll closes the ranks concurrently, as separate nodes would; Close of
// a healthy rank waits (briefly) for its neighbours to close too.
func closeAll(rings []*Ring) {
	var wg sync.WaitGroup
	for _, r := range rings {
		if r != nil {
			wg.Go(func() { r.Close() })
		}
	}
	wg.Wait()
}

// reduceAll runs one AllReduce per rank concurrently and returns the errors.
func reduceAll(rings []*Ring, bufs [][]float32) []error {
	errs := make([]error, len(rings))
	var wg sync.WaitGroup
	for i, r := range rings {
		wg.Go(func() { errs[i] = r.AllReduce(context.Background(), bufs[i]) })
	}
	wg.Wait()
	return errs
}

func randomBufs(rng *rand.Rand, n, length int) ([][]float32, []float64, []float64) {
	bufs := make([][]float32, n)
	ref := make([]float64, length)
	abs := make([]float64, length)
	for i := range bufs {
		bufs[i] = make([]float32, length)
		for j := range bufs[i] {
			v := float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(5)-2)))
			bufs[i][j] = v
			ref[j] += float64(v)
			abs[j] += math.Abs(float64(v))
		}
	}
	return bufs, ref, abs
}

// checkResult asserts every rank holds the same bytes, within tol·Σ|x| of the
// float64 sum.
func checkResult(t *testing.T, bufs [][]float32, ref, abs []float64, tol float64) {
	t.Helper()
	for i := 1; i < len(bufs); i++ {
		for j := range bufs[i] {
			if math.Float32bits(bufs[i][j]) != math.Float32bits(bufs[0][j]) {
				t.Fatalf("rank %d element %d = %v, rank 0 has %v: ranks differ", i, j, bufs[i][j], bufs[0][j])
			}
		}
	}
	for j, want := range ref {
		if d := math.Abs(float64(bufs[0][j]) - want); d > tol*abs[j]+1e-30 {
			t.Fatalf("element %d = %v, float64 sum %v: error %g exceeds %g·Σ|x| = %g", j, bufs[0][j], want, d, tol, tol*abs[j])
		}
	}
}

// f32tol is the float32 bound for a sum of n terms: n-1 roundings, each at
// most 2^-24 relative to a partial sum bounded by Σ|x|.
func f32tol(n int) float64 { return float64(n) * 0x1p-24 }

func TestAllReduceSizes(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		rng := rand.New(rand.NewPCG(1, 2))
		for n := 1; n <= 8; n++ {
			t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
				lengths := []int{0, 1, max(n-1, 1), n, 1009, 4099, 65537 + rng.IntN(1000)}
				if n <= 2 {
					lengths = append(lengths, 16<<20) // 64 MiB, only where it is quick
				}
				rings := newRings(t, tr, n, func(c *Config) { c.ChunkBytes = MinChunkBytes })
				for _, length := range lengths {
					bufs, ref, abs := randomBufs(rng, n, length)
					for i, err := range reduceAll(rings, bufs) {
						if err != nil {
							t.Fatalf("length %d rank %d: %v", length, i, err)
						}
					}
					checkResult(t, bufs, ref, abs, f32tol(n))
				}
			})
		}
	})
}

func TestAllReduceBFloat16(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		rng := rand.New(rand.NewPCG(3, 4))
		for _, n := range []int{2, 3, 5} {
			rings := newRings(t, tr, n, func(c *Config) { c.Wire = BFloat16; c.ChunkBytes = MinChunkBytes })
			bufs, ref, abs := randomBufs(rng, n, 50021)
			for i, err := range reduceAll(rings, bufs) {
				if err != nil {
					t.Fatalf("n=%d rank %d: %v", n, i, err)
				}
			}
			checkResult(t, bufs, ref, abs, BFloat16ErrorBound(n))
			// The bound must not be vacuous: bfloat16 really loses precision.
			worst := 0.0
			for j := range ref {
				worst = max(worst, math.Abs(float64(bufs[0][j])-ref[j])/abs[j])
			}
			if worst < f32tol(n)*4 {
				t.Fatalf("n=%d: worst relative error %g looks like float32, not bfloat16", n, worst)
			}
			closeAll(rings)
		}
	})
}

func TestBucketsInFlight(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		const n, ops = 3, 6
		rings := newRings(t, tr, n, func(c *Config) { c.ChunkBytes = 64 << 10 })
		rng := rand.New(rand.NewPCG(5, 6))
		type bucket struct {
			bufs     [][]float32
			ref, abs []float64
		}
		buckets := make([]bucket, ops)
		for k := range buckets {
			b := &buckets[k]
			b.bufs, b.ref, b.abs = randomBufs(rng, n, 1+rng.IntN(300000))
		}
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, r := range rings {
			wg.Go(func() {
				started := make([]*Op, ops)
				for k := range buckets {
					op, err := r.Start(context.Background(), buckets[k].bufs[i])
					if err != nil {
						errs[i] = err
						return
					}
					if op.Seq() != uint64(k) {
						errs[i] = fmt.Errorf("op %d has seq %d", k, op.Seq())
						return
					}
					started[k] = op
				}
				// Completion is in start order: once op k is done, all before it are.
				for k := ops - 1; k >= 0; k-- {
					if err := started[k].Wait(); err != nil {
						errs[i] = err
						return
					}
					for j := 0; j < k; j++ {
						select {
						case <-started[j].Done():
						default:
							errs[i] = fmt.Errorf("op %d done before op %d", k, j)
							return
						}
					}
				}
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("rank %d: %v", i, err)
			}
		}
		for _, b := range buckets {
			checkResult(t, b.bufs, b.ref, b.abs, f32tol(n))
		}
	})
}

// TestPeerKilled closes one rank abruptly in the middle of an operation; every
// other rank must get an error (not hang) well within its deadline.
func TestPeerKilled(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		const n, victim = 4, 2
		rings := newRings(t, tr, n, func(c *Config) { c.Timeout = 10 * time.Second; c.ChunkBytes = 64 << 10 })
		bufs := make([][]float32, n)
		for i := range bufs {
			bufs[i] = make([]float32, 8<<20)
		}
		ops := make([]*Op, n)
		for i, r := range rings {
			op, err := r.Start(context.Background(), bufs[i])
			if err != nil {
				t.Fatal(err)
			}
			ops[i] = op
		}
		// Wait until data flows, then kill the victim.
		for ops[victim].recvd.Load() == 0 {
			select {
			case <-ops[victim].Done():
				t.Fatal("operation finished before the victim could be killed; make it bigger")
			case <-time.After(time.Millisecond):
			}
		}
		rings[victim].Close()
		for i, op := range ops {
			err := op.Wait()
			if err == nil {
				t.Fatalf("rank %d: operation succeeded with rank %d dead", i, victim)
			}
			if i != victim && strings.Contains(err.Error(), "timed out") {
				t.Errorf("rank %d noticed the dead peer only by timeout: %v", i, err)
			}
			t.Logf("rank %d: %v", i, err)
		}
		// A broken ring refuses new work with the same cause.
		if _, err := rings[0].Start(context.Background(), bufs[0]); err == nil {
			t.Fatal("broken ring accepted a new operation")
		}
	})
}

// TestStalledPeer: a rank that never joins the operation turns into a timeout
// error on every other rank, naming where it stalled.
func TestStalledPeer(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		const n = 3
		rings := newRings(t, tr, n, func(c *Config) { c.Timeout = 300 * time.Millisecond })
		var wg sync.WaitGroup
		for i := 0; i < n-1; i++ {
			wg.Go(func() {
				err := rings[i].AllReduce(context.Background(), make([]float32, 1000))
				if err == nil {
					t.Errorf("rank %d: succeeded although rank %d never started", i, n-1)
					return
				}
				if !strings.Contains(err.Error(), "generation 1") {
					t.Errorf("rank %d: error does not name the generation: %v", i, err)
				}
			})
		}
		wg.Wait()
	})
}

func TestContextCancel(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		rings := newRings(t, tr, 2, nil)
		ctx, cancel := context.WithCancel(context.Background())
		op, err := rings[0].Start(ctx, make([]float32, 100))
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := op.Wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
}

func TestStaleGeneration(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		ls, addrs := listeners(t, 2)
		old, err := New(Config{Generation: 6, Rank: 0, Peers: addrs, Listener: ls[0], Key: testKey, Timeout: 5 * time.Second, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		cur, err := New(Config{Generation: 7, Rank: 1, Peers: addrs, Listener: ls[1], Key: testKey, Timeout: 300 * time.Millisecond, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		defer cur.Close()
		defer old.Close() // first: it is broken, so it shuts down at once
		err = old.AllReduce(context.Background(), make([]float32, 10))
		if err == nil || !strings.Contains(err.Error(), "generation 6") || !strings.Contains(err.Error(), "generation 7") {
			t.Fatalf("stale rank got %v; want a rejection naming generations 6 and 7", err)
		}
	})
}

func TestWrongKey(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		other, err := auth.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		rings := newRings(t, tr, 2, func(c *Config) {
			c.Timeout = 2 * time.Second
			if c.Rank == 1 {
				c.Key = other
			}
		})
		errs := reduceAll(rings, [][]float32{make([]float32, 10), make([]float32, 10)})
		for i, err := range errs {
			if err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
				t.Errorf("rank %d: got %v, want Unauthenticated", i, err)
			}
		}
	})
}

// rawStream opens a ring stream to addr the way a (possibly misbehaving) peer
// would, with the given dial options.
func rawStream(t *testing.T, addr string, opts []grpc.DialOption) grpc.ClientStream {
	t.Helper()
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := cc.NewStream(ctx, &serviceDesc.Streams[0], streamMethod, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func send(t *testing.T, s grpc.ClientStream, h header, payload []byte) {
	t.Helper()
	m := outMsg{hdr: make([]byte, headerLen)}
	h.encode(m.hdr)
	if payload != nil {
		m.payload = mem.SliceBuffer(payload)
	}
	// io.EOF means the server has already ended the stream (a rejection
	// can beat the first message); gRPC reports the status on RecvMsg,
	// which is where the callers look for it.
	if err := s.SendMsg(&m); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
}

// fakeLeft plays rank 0 of a 2-rank ring of generation 1 towards the rank
// at addr: it opens an authenticated ring stream and, with the TCP transport,
// the authenticated data connection. The returned function sends one data
// message on the data path.
func fakeLeft(t *testing.T, addr string, tr Transport) func(h header, payload []byte) {
	t.Helper()
	s := rawStream(t, addr, dialOptions(testKey, nil))
	send(t, s, header{Kind: kindHello, Gen: 1, From: 0, Step: 2, Chunk: uint32(tr)}, nil)
	if tr == GRPC {
		return func(h header, payload []byte) { send(t, s, h, payload) }
	}
	conn := dataConn(t, s, addr)
	if err := clientHandshake(conn, testKey, 1, 0, 1); err != nil {
		t.Fatal(err)
	}
	if tr == SHM {
		return fakeShmSender(t, conn)
	}
	return func(h header, payload []byte) {
		b := make([]byte, headerLen)
		h.encode(b)
		if _, err := conn.Write(append(b, payload...)); err != nil {
			t.Fatal(err)
		}
	}
}

// dataConn reads the data offer from a ring stream and connects to it.
func dataConn(t *testing.T, s grpc.ClientStream, addr string) *net.TCPConn {
	t.Helper()
	in := inMsg{expect: kindOffer}
	if err := s.RecvMsg(&in); err != nil {
		t.Fatalf("no data offer: %v", err)
	}
	c, err := net.Dial("tcp", net.JoinHostPort(dataHost(addr), fmt.Sprint(in.hdr.Chunk)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func TestMissingCredential(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		rings := newRings(t, tr, 2, nil)
		s := rawStream(t, rings[1].cfg.Peers[1], []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}) // no token
		hello := header{Kind: kindHello, Gen: 1, From: 0, Step: 2, Chunk: uint32(tr)}
		send(t, s, hello, nil)
		err := s.RecvMsg(&inMsg{})
		if err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
			t.Fatalf("got %v, want Unauthenticated", err)
		}
	})
}

// TestForeignDataRejected impersonates the left neighbour and sends data of
// another operation or generation: the receiving rank must fail, naming both.
func TestForeignDataRejected(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		for name, c := range map[string]struct {
			h    header
			want []string
		}{
			"operation":  {header{Kind: kindData, Gen: 1, Seq: 5, Count: 4}, []string{"operation 5", "operation 0 expected"}},
			"generation": {header{Kind: kindData, Gen: 9, Seq: 0, Count: 4}, []string{"generation 9", "generation 1"}},
		} {
			t.Run(name, func(t *testing.T) {
				ls, addrs := listeners(t, 2)
				ls[0].Close() // rank 0 is played by the test
				r, err := New(Config{Generation: 1, Rank: 1, Peers: addrs, Listener: ls[1], Key: testKey, Timeout: 5 * time.Second, Transport: tr})
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				op, err := r.Start(context.Background(), make([]float32, 8))
				if err != nil {
					t.Fatal(err)
				}
				sendData := fakeLeft(t, addrs[1], tr)
				sendData(c.h, make([]byte, 16))
				err = op.Wait()
				for _, w := range c.want {
					if err == nil || !strings.Contains(err.Error(), w) {
						t.Fatalf("got %v, want it to contain %q", err, w)
					}
				}
			})
		}
	})
}

// TestSharedServer attaches two successive generations to one service
// registered on caller-owned gRPC servers.
func TestSharedServer(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		const n = 3
		ls, addrs := listeners(t, n)
		svcs := make([]*Server, n)
		for i := range svcs {
			s, err := NewServer(testKey)
			if err != nil {
				t.Fatal(err)
			}
			gs := grpc.NewServer(ServerOptions(testKey, nil)...)
			s.Register(gs)
			go gs.Serve(ls[i])
			t.Cleanup(gs.Stop)
			svcs[i] = s
		}
		rng := rand.New(rand.NewPCG(7, 8))
		for gen := uint64(1); gen <= 2; gen++ {
			rings := make([]*Ring, n)
			for i := range rings {
				r, err := New(Config{Generation: gen, Rank: i, Peers: addrs, Server: svcs[i], Key: testKey, Transport: tr})
				if err != nil {
					t.Fatal(err)
				}
				rings[i] = r
			}
			bufs, ref, abs := randomBufs(rng, n, 12345)
			for i, err := range reduceAll(rings, bufs) {
				if err != nil {
					t.Fatalf("generation %d rank %d: %v", gen, i, err)
				}
			}
			checkResult(t, bufs, ref, abs, f32tol(n))
			closeAll(rings)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Generation: 1, Rank: 0, Peers: []string{"127.0.0.1:1", "127.0.0.1:2"}, Key: testKey}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	svc, err := NewServer(testKey)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := auth.GenerateKey()
	otherSvc, _ := NewServer(other)
	lis, _ := listeners(t, 1)
	defer lis[0].Close()
	for want, mod := range map[string]func(*Config){
		"Generation is 0":   func(c *Config) { c.Generation = 0 },
		"Peers is empty":    func(c *Config) { c.Peers = nil },
		"Rank is 2":         func(c *Config) { c.Rank = 2 },
		"not host:port":     func(c *Config) { c.Peers = []string{"a", "b"} },
		"are both":          func(c *Config) { c.Peers = []string{"h:1", "h:1"} },
		"ChunkBytes is 100": func(c *Config) { c.ChunkBytes = 100 },
		"Wire is wire(7)":   func(c *Config) { c.Wire = 7 },
		"Timeout is -1s":    func(c *Config) { c.Timeout = -time.Second },
		"Config.Key":        func(c *Config) { c.Key = nil },
		"not both":          func(c *Config) { c.Server = svc; c.Listener = lis[0] },
		"different key":     func(c *Config) { c.Server = otherSvc },
		"has no effect":     func(c *Config) { c.Server = svc; c.ServerTLS = new(tls.Config) },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want error containing %q", err, want)
		}
	}
}
