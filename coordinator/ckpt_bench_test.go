package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
)

// gpt2Params is GPT-2 124M's parameter count: its trainer state under
// AdamW (parameters and two moments, float32) is ~1.49 GB.
const gpt2Params = 124_439_808

// BenchmarkCheckpointPull is the coordinator's checkpoint path at GPT-2
// 124M size (scripts/bench.sh ckpt): a real bulk server on loopback serves
// the state from memory (as a node's WriteState does), and pullCheckpoint
// receives, verifies and writes it into a checkpoint file, fsync included.
// Three runs; reports the median seconds. RINGTUNE_CKPT_PARAMS overrides
// the parameter count, RINGTUNE_CKPT_DIR the directory written,
// RINGTUNE_CKPT_CHUNK the bulk chunk size (default cluster.bulk_chunk_bytes'
// default).
func BenchmarkCheckpointPull(b *testing.B) {
	n := gpt2Params
	if v := os.Getenv("RINGTUNE_CKPT_PARAMS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatalf("RINGTUNE_CKPT_PARAMS=%q: %v", v, err)
		}
	}
	chunk := 1 << 20
	if v := os.Getenv("RINGTUNE_CKPT_CHUNK"); v != "" {
		var err error
		if chunk, err = strconv.Atoi(v); err != nil {
			b.Fatalf("RINGTUNE_CKPT_CHUNK=%q: %v", v, err)
		}
	}
	dir := os.Getenv("RINGTUNE_CKPT_DIR")
	if dir == "" {
		dir = b.TempDir()
	} else {
		dir = filepath.Join(dir, "ckpt")
		b.Cleanup(func() { _ = os.RemoveAll(dir) })
	}
	state := benchState(n)
	key, err := auth.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	src := func(_ context.Context, r bulk.Request) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(state)), nil
	}
	addr := serveBulk(b, key, src)
	cc, err := bulk.Dial(addr, key, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	b.ResetTimer()
	for range b.N {
		var secs, cpus []float64
		for run := range 3 {
			start, cpu0 := time.Now(), cpuSeconds()
			path, diskErr, err := pullCheckpoint(context.Background(), cc, dir, run+1, 1, nil, 0, chunk, time.Minute)
			if diskErr != nil || err != nil {
				b.Fatalf("pullCheckpoint: disk %v, transfer %v", diskErr, err)
			}
			secs = append(secs, time.Since(start).Seconds())
			cpus = append(cpus, cpuSeconds()-cpu0)
			b.Logf("run %d: %.3f s, %.3f s of CPU (both ends)", run, secs[run], cpus[run])
			if run == 0 {
				b.StopTimer()
				ck, err := VerifyCheckpoint(path)
				if err != nil || ck.Bytes != int64(len(state)) {
					b.Fatalf("checkpoint written: %+v %v", ck, err)
				}
				b.StartTimer()
			}
			// Removing a 1.5 GB file takes the kernel ~1 s: not part of
			// writing one (torch_save's runs are removed untimed too).
			b.StopTimer()
			if err := os.Remove(path); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		slices.Sort(secs)
		slices.Sort(cpus)
		b.ReportMetric(secs[1], "s")
		b.ReportMetric(cpus[1], "cpu-s")
		b.ReportMetric(float64(len(state)), "bytes")
		// The transfer alone, as pullCheckpoint asks for it (CRC-32C on the
		// wire, SHA-256 on this side), received, verified and dropped: the
		// floor a checkpoint's write hides behind when it overlaps well.
		var fetch, fcpu []float64
		for range 3 {
			start, cpu0 := time.Now(), cpuSeconds()
			req := bulk.Request{Kind: bulk.KindState, Step: 1, ChunkBytes: chunk, Sum: bulk.SumCRC32C}
			if _, err := bulk.FetchHashed(context.Background(), cc, req, io.Discard, time.Minute, sha256.New()); err != nil {
				b.Fatal(err)
			}
			fetch = append(fetch, time.Since(start).Seconds())
			fcpu = append(fcpu, cpuSeconds()-cpu0)
		}
		b.Logf("fetch only: %.3f %.3f %.3f s, %.3f %.3f %.3f s of CPU", fetch[0], fetch[1], fetch[2], fcpu[0], fcpu[1], fcpu[2])
		slices.Sort(fetch)
		slices.Sort(fcpu)
		b.ReportMetric(fetch[1], "fetch-s")
		b.ReportMetric(fcpu[1], "fetch-cpu-s")
	}
}

// benchState is a state of n parameters in control.EncodeState's layout
// with AdamW's two moments, filled with pseudo-random bytes.
func benchState(n int) []byte {
	var hdr bytes.Buffer
	_ = control.WriteStateHeader(&hdr, n, 2*n, 7)
	st := make([]byte, hdr.Len()+12*n)
	copy(st, hdr.Bytes())
	r := rand.New(rand.NewPCG(1, 2))
	piece := st[hdr.Len():min(len(st), hdr.Len()+1<<20)]
	for i := 0; i+8 <= len(piece); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			piece[i+k] = byte(v >> (8 * k))
		}
	}
	for off := hdr.Len() + len(piece); off < len(st); off += len(piece) {
		copy(st[off:], piece)
	}
	return st
}

// serveBulk runs a real gRPC server with the cluster's auth options and a
// bulk service on loopback until the test ends.
func serveBulk(tb testing.TB, key auth.Key, src bulk.Source) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	gs := grpc.NewServer(auth.ServerOptions(key, nil)...)
	bs, err := bulk.NewServer(key, src, 0)
	if err != nil {
		tb.Fatal(err)
	}
	bs.Register(gs)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	tb.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

// cpuSeconds is the user and system CPU time this process has used.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
