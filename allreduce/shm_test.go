package allreduce

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeShmSender answers a real receiver's shared-memory offer on conn the
// way a sender does (it maps the segment) and returns a function that sends
// one data message through the next slot.
func fakeShmSender(t *testing.T, conn *net.TCPConn) func(h header, payload []byte) {
	t.Helper()
	r := &Ring{cfg: Config{Generation: 1, Rank: 0, Peers: []string{"a:1", "b:1"}, ChunkBytes: DefaultChunkBytes, Logf: t.Logf}, size: 2, right: 1, left: 1}
	seg, err := r.acceptShm(conn)
	if err != nil || seg == nil {
		t.Fatalf("fake sender could not map the receiver's segment: %v", err)
	}
	t.Cleanup(seg.close)
	next := 0
	return func(h header, payload []byte) {
		copy(seg.slot(next), payload)
		next++
		b := make([]byte, headerLen)
		h.encode(b)
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
}

// shmFiles lists the segments this package left in dir.
func shmFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, shmPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// logLines collects Config.Logf output of several rings.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (l *logLines) all() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// TestShmUsedAndClean: on one host every link of an SHM ring carries its
// payloads through shared memory, the results are right, and no segment
// name is left in the directory once the links are up (the receiver
// unlinks right after the sender attached).
func TestShmUsedAndClean(t *testing.T) {
	dir := t.TempDir()
	var logs logLines
	const n = 3
	rings := newRings(t, SHM, n, func(c *Config) { c.shmDir = dir; c.Logf = logs.logf; c.ChunkBytes = 64 << 10 })
	rng := rand.New(rand.NewPCG(3, 3))
	bufs, ref, abs := randomBufs(rng, n, 1<<20+7)
	mustOK(t, "all-reduce", reduceAll(rings, bufs))
	checkResult(t, bufs, ref, abs, f32tol(n))
	for i, r := range rings {
		if s, rc := r.SharedMemory(); !s || !rc {
			t.Errorf("rank %d: shared memory send=%v recv=%v, want both (log: %s)", i, s, rc, logs.all())
		}
	}
	if f := shmFiles(t, dir); len(f) != 0 {
		t.Errorf("segments left behind while the ring runs: %v", f)
	}
	if l := logs.all(); l != "" {
		t.Errorf("unexpected fallback log: %s", l)
	}
}

// TestShmFallback: when the sender cannot open the offered segment (here:
// it looks in another directory, as a rank on another host would) or the
// receiver cannot create one, the link carries payloads on TCP, says so in
// the log, and the results are still right.
func TestShmFallback(t *testing.T) {
	for name, c := range map[string]struct {
		dir  func(t *testing.T, rank int) string
		want string
	}{
		"sender cannot open": {func(t *testing.T, rank int) string { return t.TempDir() }, "opening the offered shared memory"},
		"receiver cannot create": {func(t *testing.T, rank int) string {
			return filepath.Join(t.TempDir(), "missing")
		}, "creating shared memory"},
	} {
		t.Run(name, func(t *testing.T) {
			var logs logLines
			const n = 2
			dirs := []string{c.dir(t, 0), c.dir(t, 1)}
			rank := 0
			rings := newRings(t, SHM, n, func(cfg *Config) {
				cfg.shmDir = dirs[rank]
				rank++
				cfg.Logf = logs.logf
				cfg.ChunkBytes = 64 << 10
			})
			rng := rand.New(rand.NewPCG(4, 4))
			bufs, ref, abs := randomBufs(rng, n, 300001)
			mustOK(t, "all-reduce", reduceAll(rings, bufs))
			checkResult(t, bufs, ref, abs, f32tol(n))
			for i, r := range rings {
				if s, rc := r.SharedMemory(); s || rc {
					t.Errorf("rank %d: shared memory send=%v recv=%v, want TCP both ways", i, s, rc)
				}
			}
			l := logs.all()
			if !strings.Contains(l, c.want) || !strings.Contains(l, "travel on TCP") {
				t.Errorf("log does not say why payloads travel on TCP (want %q):\n%s", c.want, l)
			}
			for _, d := range dirs {
				if f := shmFiles(t, d); len(f) != 0 {
					t.Errorf("segments left behind: %v", f)
				}
			}
		})
	}
}

// TestShmOfferChecks: the sender maps only segments this package names,
// with slots big enough for its chunks and the nonce it was offered.
func TestShmOfferChecks(t *testing.T) {
	dir := t.TempDir()
	r := &Ring{cfg: Config{Generation: 1, Peers: []string{"a:1", "b:1"}, ChunkBytes: 64 << 10, shmDir: dir}, size: 2, right: 1, left: 1}
	name := shmPrefix + randomHex(16)
	seg, unlink, err := createShm(dir, name, 4, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.close()
	defer unlink()
	copy(seg.mem, "the real nonce, 32 bytes long!!!")
	good := shmOffer{ok: true, slots: 4, slotBytes: 64 << 10, name: name}
	copy(good.nonce[:], "the real nonce, 32 bytes long!!!")
	o, err := decodeShmOffer(good.encode())
	if err != nil || o != good {
		t.Fatalf("offer round trip: %+v, %v", o, err)
	}
	m, err := r.mapOffer(good)
	if err != nil {
		t.Fatalf("good offer refused: %v", err)
	}
	m.close()
	for what, c := range map[string]struct {
		mod  func(o *shmOffer)
		want string
	}{
		"path":      {func(o *shmOffer) { o.name = "../etc/passwd" }, "not one this package creates"},
		"small":     {func(o *shmOffer) { o.slotBytes = 4 << 10 }, "chunk_bytes must agree"},
		"nonce":     {func(o *shmOffer) { o.nonce[0] ^= 1 }, "another nonce"},
		"size":      {func(o *shmOffer) { o.slots = 5 }, "the offer says"},
		"too many":  {func(o *shmOffer) { o.slots = 1000 }, "slots"},
		"not there": {func(o *shmOffer) { o.name = shmPrefix + randomHex(16) }, "opening"},
	} {
		o := good
		c.mod(&o)
		if _, err := r.mapOffer(o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", what, err, c.want)
		}
	}
	if _, err := decodeShmOffer(make([]byte, shmOfferLen)); err == nil {
		t.Error("an offer without magic was accepted")
	}
}

// TestShmCreditsChecked: a receiver that returns more slots than it was
// lent, or garbage instead of credits, breaks the sender.
func TestShmCreditsChecked(t *testing.T) {
	for what, b := range map[string][]byte{"too many": {shmCredit, shmCredit}, "garbage": {0x42}} {
		c, s := tcpPair(t)
		dir := t.TempDir()
		seg, unlink, err := createShm(dir, shmPrefix+randomHex(16), 2, 4<<10)
		if err != nil {
			t.Fatal(err)
		}
		unlink()
		snd := newShmSender(c.(*net.TCPConn), seg)
		snd.free = 1
		s.Write(b)
		err = snd.takeCredits()
		seg.close()
		if err == nil {
			t.Errorf("%s: credits %x accepted", what, b)
		}
	}
}

// TestShmCloseDrains: healthy SHM rings close without hanging, again and
// again, each rank as soon as its own operation is done (the sender drains
// the receiver's last credits before it closes its socket).
func TestShmCloseDrains(t *testing.T) {
	for range 5 {
		rings := newRings(t, SHM, 2, func(c *Config) { c.ChunkBytes = 4 << 10 })
		done := make(chan error, 2)
		for _, r := range rings {
			go func() {
				err := r.AllReduce(context.Background(), make([]float32, 10000))
				r.Close()
				done <- err
			}()
		}
		for range rings {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("operation failed around Close: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Close hung")
			}
		}
	}
}

// Environment of TestShmKillHelper, the rank that TestShmKill9 runs in a
// child process and kills.
const (
	envHelperPeers = "RINGTUNE_SHM_HELPER_PEERS"
	envHelperKey   = "RINGTUNE_SHM_HELPER_KEY"
	envHelperDir   = "RINGTUNE_SHM_HELPER_DIR"
)

// TestShmKillHelper is rank 1 of TestShmKill9's ring, run in a child
// process (skipped otherwise): it all-reduces until it is killed.
func TestShmKillHelper(t *testing.T) {
	peers := os.Getenv(envHelperPeers)
	if peers == "" {
		t.Skip("only runs as TestShmKill9's child process")
	}
	key, err := hex.DecodeString(os.Getenv(envHelperKey))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Generation: 1, Rank: 1, Peers: strings.Split(peers, ","), Listener: lis, Key: key,
		Transport: SHM, ChunkBytes: 64 << 10, Timeout: time.Minute, shmDir: os.Getenv(envHelperDir)})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]float32, 1<<20)
	for {
		if err := r.AllReduce(context.Background(), buf); err != nil {
			t.Fatal(err)
		}
	}
}

// TestShmKill9: kill -9 of a rank in the middle of shared-memory traffic
// breaks its neighbour at once (not by timeout), and leaves no segment
// behind in the shared-memory directory, since names are unlinked as soon
// as both sides have mapped them.
func TestShmKill9(t *testing.T) {
	base := "/dev/shm"
	if st, err := os.Stat(base); err != nil || !st.IsDir() {
		base = "" // os.MkdirTemp's default
	}
	dir, err := os.MkdirTemp(base, "ringtune-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ls, addrs := listeners(t, 2)
	f, err := ls[1].(*net.TCPListener).File()
	ls[1].Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestShmKillHelper$")
	cmd.Env = append(os.Environ(), envHelperPeers+"="+strings.Join(addrs, ","), envHelperKey+"="+hex.EncodeToString(testKey), envHelperDir+"="+dir)
	cmd.ExtraFiles = []*os.File{f}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	r, err := New(Config{Generation: 1, Rank: 0, Peers: addrs, Listener: ls[0], Key: testKey, Transport: SHM,
		ChunkBytes: 64 << 10, Timeout: time.Minute, shmDir: dir, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]float32, 1<<20)
	for i := range 3 {
		if err := r.AllReduce(context.Background(), buf); err != nil {
			t.Fatalf("all-reduce %d with the child rank: %v\nchild output:\n%s", i, err, out.String())
		}
	}
	if s, rc := r.SharedMemory(); !s || !rc {
		t.Fatalf("shared memory send=%v recv=%v, want both", s, rc)
	}
	// Kill the child in the middle of an operation.
	op, err := r.Start(context.Background(), buf)
	if err != nil {
		t.Fatal(err)
	}
	for op.recvd.Load() == 0 {
		select {
		case <-op.Done():
		case <-time.After(100 * time.Microsecond):
			continue
		}
		break
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	waited = true
	start := time.Now()
	err = op.Wait()
	if err == nil {
		// On a loaded machine the operation can end between the check
		// and the kill; the next one meets the dead peer.
		t.Log("the operation finished before the kill; starting another")
		if op, err = r.Start(context.Background(), buf); err == nil {
			err = op.Wait()
		}
		if err == nil {
			t.Fatal("operation succeeded although its peer was killed")
		}
	}
	if strings.Contains(err.Error(), "timed out") || time.Since(start) > 30*time.Second {
		t.Errorf("the dead peer was noticed only by timeout: %v", err)
	}
	if !strings.Contains(err.Error(), "rank 1") {
		t.Errorf("error does not name the dead neighbour: %v", err)
	}
	t.Logf("after kill -9: %v", err)
	if f := shmFiles(t, dir); len(f) != 0 {
		t.Errorf("segments left behind after kill -9: %v", f)
	}
}

// TestShmTransportMismatch: an SHM rank next to a TCP rank fails with an
// error naming both transports, as any mismatch does, instead of one side
// waiting for an offer the other never sends.
func TestShmTransportMismatch(t *testing.T) {
	ls, addrs := listeners(t, 2)
	rings := make([]*Ring, 2)
	for i, tr := range []Transport{SHM, TCP} {
		r, err := New(Config{Generation: 1, Rank: i, Peers: addrs, Listener: ls[i], Key: testKey, Timeout: 5 * time.Second, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		rings[i] = r
	}
	defer closeAll(rings)
	errs := reduceAll(rings, [][]float32{make([]float32, 10), make([]float32, 10)})
	found := false
	for _, err := range errs {
		if err == nil {
			t.Fatal("a rank succeeded with mismatched transports")
		}
		if strings.Contains(err.Error(), "timed out") {
			t.Errorf("mismatch noticed only by timeout: %v", err)
		}
		found = found || (strings.Contains(err.Error(), "shm") && strings.Contains(err.Error(), "tcp"))
	}
	if !found {
		t.Fatalf("no error names both transports: %v", errs)
	}
}

// TestShmSenderStalledOnCredits: a neighbour that stops taking chunks
// leaves the sender waiting for slot credits; the operation's deadline
// still ends the wait with the usual timeout error, and Close returns.
func TestShmSenderStalledOnCredits(t *testing.T) {
	rings := newRings(t, SHM, 2, func(c *Config) { c.ChunkBytes = 4 << 10; c.Timeout = 500 * time.Millisecond })
	// Rank 1 never starts the operation: it reads the first header, then
	// waits for an operation to put it in, returning no credits.
	err := rings[0].AllReduce(context.Background(), make([]float32, 64<<10))
	if err == nil || !strings.Contains(err.Error(), "timed out") || !strings.Contains(err.Error(), "generation 1") {
		t.Fatalf("got %v, want the operation's timeout naming the generation", err)
	}
	if s, _ := rings[0].SharedMemory(); !s {
		t.Fatal("rank 0 did not send through shared memory; the test proves nothing")
	}
	done := make(chan struct{})
	go func() { closeAll(rings); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung after the stall")
	}
}
