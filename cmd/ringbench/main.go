// Command ringbench measures allreduce.Ring with one OS process per rank on
// 127.0.0.1, the way gloo_allreduce.py measures gloo, and prints the
// comparison lines of scripts/bench/allreduce.sh.
//
//	ringbench -n 2,3,4 -sizes-mib 1,16,64,256 -json out.json   # measure
//	ringbench -report -ring-json 'r*.json' -gloo-json 'g*.json' -tcp-json t.json
//
// Measure mode launches, per world size, n copies of itself (-worker) that
// inherit their listeners (no port races) and the key through the
// environment. Each worker checks correctness once, warms up, synchronises
// with a 1-element all-reduce, then times iterations; time/op is the slowest
// rank's loop time / iterations, busbw = bytes/time · 2(n-1)/n (nccl-tests).
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
)

const mib = 1 << 20

// iters mirrors gloo_allreduce.py's (warm-up, timed) iterations per size so
// both sides average over the same work.
func iters(sizeMiB int, scale float64) (int, int) {
	w, n := 2, max(3, 256/max(sizeMiB, 1)*4)
	switch sizeMiB {
	case 1:
		w, n = 5, 40
	case 16:
		w, n = 3, 12
	case 64:
		w, n = 2, 6
	case 256:
		w, n = 1, 4
	}
	return w, max(2, int(float64(n)*scale+0.5))
}

type result struct {
	N       int     `json:"n"`
	SizeMiB int     `json:"size_mib"`
	Bytes   int     `json:"bytes"`
	Iters   int     `json:"iters"`
	TimeS   float64 `json:"time_s"` // slowest rank's loop time / iters
	BusBW   float64 `json:"busbw_gbps"`
	Correct bool    `json:"correct"`
	// Transport is the data path measured: the -transport asked for, as
	// resolved by the ring ("tcp", "grpc", "shm"), or "shm-fallback" when
	// shm was asked for but some link carried its payloads on TCP.
	Transport string `json:"transport"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ringbench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		ns       = flag.String("n", "2,3,4", "world sizes")
		sizes    = flag.String("sizes-mib", "1,16,64,256", "buffer sizes in MiB")
		scale    = flag.Float64("iters-scale", 1, "scale timed iterations")
		chunk    = flag.Int("chunk-bytes", 0, "allreduce chunk size (0 = default)")
		wire     = flag.String("wire", "float32", "float32 or bfloat16")
		tport    = flag.String("transport", "default", "data path: tcp, grpc, shm or default (the package default)")
		jsonOut  = flag.String("json", "", "write results here")
		timeout  = flag.Duration("timeout", 5*time.Minute, "limit per launch")
		cpuprof  = flag.String("cpuprofile", "", "rank 0 writes a CPU profile here")
		worker   = flag.Bool("worker", false, "internal: run one rank")
		rank     = flag.Int("rank", 0, "internal: rank")
		peers    = flag.String("peers", "", "internal: peer addresses")
		report   = flag.Bool("report", false, "print comparison lines from JSON files")
		ringJSON = flag.String("ring-json", "", "report: glob of ringbench JSON files")
		glooJSON = flag.String("gloo-json", "", "report: glob of gloo_allreduce.py JSON files")
		tcpJSON  = flag.String("tcp-json", "", "report: tcp_loopback JSON file")
	)
	flag.Parse()
	w := allreduce.Float32
	if *wire == "bfloat16" {
		w = allreduce.BFloat16
	} else if *wire != "float32" {
		return fmt.Errorf("-wire %q: want float32 or bfloat16", *wire)
	}
	tr, err := allreduce.ParseTransport(*tport)
	if err != nil {
		return fmt.Errorf("-transport: %w", err)
	}
	switch {
	case *worker:
		return runWorker(*rank, strings.Split(*peers, ","), ints(*sizes), *scale, *chunk, w, tr, *cpuprof)
	case *report:
		return runReport(*ringJSON, *glooJSON, *tcpJSON)
	}
	var all []result
	for _, n := range ints(*ns) {
		res, err := launch(n, *sizes, *scale, *chunk, *wire, *tport, *timeout, *cpuprof)
		if err != nil {
			return fmt.Errorf("n=%d: %w", n, err)
		}
		for _, r := range res {
			fmt.Printf("ring %s n=%d %4d MiB  %8.2f ms/op  busbw %.3f GB/s  correct=%v\n", r.Transport, r.N, r.SizeMiB, r.TimeS*1e3, r.BusBW, r.Correct)
		}
		all = append(all, res...)
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(all, "", " ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// launch runs one world of n worker processes and combines their results.
func launch(n int, sizes string, scale float64, chunk int, wire, transport string, timeout time.Duration, cpuprof string) ([]result, error) {
	key, err := auth.GenerateKey()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	files := make([]*os.File, n)
	addrs := make([]string, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		addrs[i] = l.Addr().String()
		f, err := l.(*net.TCPListener).File()
		l.Close()
		if err != nil {
			return nil, err
		}
		files[i] = f
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmds := make([]*exec.Cmd, n)
	outs := make([]*strings.Builder, n)
	for i := range n {
		cmd := exec.CommandContext(ctx, self, "-worker", "-rank", strconv.Itoa(i), "-peers", strings.Join(addrs, ","),
			"-sizes-mib", sizes, "-iters-scale", fmt.Sprint(scale), "-chunk-bytes", strconv.Itoa(chunk), "-wire", wire, "-transport", transport)
		if i == 0 && cpuprof != "" {
			cmd.Args = append(cmd.Args, "-cpuprofile", cpuprof)
		}
		cmd.Env = append(os.Environ(), "RINGBENCH_KEY="+base64.StdEncoding.EncodeToString(key))
		cmd.ExtraFiles = []*os.File{files[i]}
		outs[i] = new(strings.Builder)
		cmd.Stdout = outs[i]
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		cmds[i] = cmd
	}
	var errs []error
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("rank %d: %w", i, err))
		}
		files[i].Close()
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var combined []result
	for i := range n {
		var rs []result
		if err := json.Unmarshal([]byte(outs[i].String()), &rs); err != nil {
			return nil, fmt.Errorf("rank %d output: %w", i, err)
		}
		for j, r := range rs {
			if i == 0 {
				combined = append(combined, r)
				continue
			}
			combined[j].TimeS = max(combined[j].TimeS, r.TimeS)
			combined[j].Correct = combined[j].Correct && r.Correct
			if r.Transport != combined[j].Transport {
				combined[j].Transport = "shm-fallback" // only SHM resolves per link
			}
		}
	}
	for j := range combined {
		r := &combined[j]
		r.BusBW = float64(r.Bytes) / r.TimeS / 1e9 * 2 * float64(n-1) / float64(n)
	}
	return combined, nil
}

func runWorker(rank int, peers []string, sizes []int, scale float64, chunk int, wire allreduce.Wire, transport allreduce.Transport, cpuprof string) error {
	key, err := base64.StdEncoding.DecodeString(os.Getenv("RINGBENCH_KEY"))
	if err != nil {
		return fmt.Errorf("RINGBENCH_KEY: %w", err)
	}
	lis, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return fmt.Errorf("inherited listener: %w", err)
	}
	ring, err := allreduce.New(allreduce.Config{Generation: 1, Rank: rank, Peers: peers, Listener: lis,
		Key: key, ChunkBytes: chunk, Wire: wire, Transport: transport, Timeout: 2 * time.Minute})
	if err != nil {
		return err
	}
	defer ring.Close()
	ctx := context.Background()
	n := len(peers)
	barrier := func() error { return ring.AllReduce(ctx, make([]float32, 1)) }
	if err := barrier(); err != nil {
		return err
	}
	// Name the path measured, not the one asked for: SHM falls back to TCP
	// payloads per link when memory cannot be shared.
	path := transport.String()
	if transport == allreduce.DefaultTransport {
		path = transport.Resolved().String()
	}
	if path == "shm" {
		if s, r := ring.SharedMemory(); !s || !r {
			path = "shm-fallback"
		}
	}
	if cpuprof != "" {
		f, err := os.Create(cpuprof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var out []result
	for _, sz := range sizes {
		buf := make([]float32, sz*mib/4)
		for i := range buf {
			buf[i] = float32(rank + 1)
		}
		if err := ring.AllReduce(ctx, buf); err != nil {
			return err
		}
		want := float32(n * (n + 1) / 2)
		correct := buf[0] == want && buf[len(buf)-1] == want
		clear(buf)
		warm, it := iters(sz, scale)
		for range warm {
			if err := ring.AllReduce(ctx, buf); err != nil {
				return err
			}
		}
		if err := barrier(); err != nil {
			return err
		}
		t0 := time.Now()
		for range it {
			if err := ring.AllReduce(ctx, buf); err != nil {
				return err
			}
		}
		el := time.Since(t0).Seconds()
		out = append(out, result{N: n, SizeMiB: sz, Bytes: sz * mib, Iters: it, TimeS: el / float64(it), Correct: correct, Transport: path})
	}
	// A last barrier so that nobody closes while others still reduce. The
	// measurements are complete by now: if a neighbour that finished first
	// already tore the ring down, say so and keep the results.
	if err := barrier(); err != nil {
		fmt.Fprintf(os.Stderr, "ringbench: rank %d: final barrier: %v (results kept)\n", rank, err)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func runReport(ringGlob, glooGlob, tcpPath string) error {
	type key struct {
		tr     string
		n, mib int
	}
	ring := map[key][]float64{}
	gloo := map[key][]float64{} // tr is ""
	tcp := map[int]float64{}
	var order []key
	ok := map[key]bool{}
	files, _ := filepath.Glob(ringGlob)
	if len(files) == 0 {
		return fmt.Errorf("no ringbench results match %q", ringGlob)
	}
	for _, f := range files {
		var rs []result
		if err := readJSON(f, &rs); err != nil {
			return err
		}
		for _, r := range rs {
			k := key{r.Transport, r.N, r.SizeMiB}
			if _, seen := ring[k]; !seen {
				order = append(order, k)
				ok[k] = true
			}
			ring[k] = append(ring[k], r.BusBW)
			ok[k] = ok[k] && r.Correct
		}
	}
	gfiles, _ := filepath.Glob(glooGlob)
	for _, f := range gfiles {
		var g struct {
			Summary []struct {
				WorldSize int `json:"world_size"`
				SizeMiB   int `json:"size_mib"`
				BusBW     struct {
					Median *float64 `json:"median"`
				} `json:"busbw_GBps"`
			} `json:"summary"`
		}
		if err := readJSON(f, &g); err != nil {
			return err
		}
		for _, s := range g.Summary {
			if s.BusBW.Median != nil {
				k := key{"", s.WorldSize, s.SizeMiB}
				gloo[k] = append(gloo[k], *s.BusBW.Median)
			}
		}
	}
	if tcpPath != "" {
		var t struct {
			Rows []struct {
				Test    string `json:"test"`
				N       int    `json:"n"`
				PerLink struct {
					Median float64 `json:"median"`
				} `json:"per_stream_or_link_GBps"`
			} `json:"rows"`
		}
		if err := readJSON(tcpPath, &t); err == nil {
			for _, r := range t.Rows {
				if r.Test == "ring" {
					tcp[r.N] = r.PerLink.Median
				}
			}
		}
	}
	na := func(v float64, have bool) string {
		if !have {
			return "NA"
		}
		return fmt.Sprintf("%.3f", v)
	}
	// Rows of one (n, size) together, tcp first.
	sort.SliceStable(order, func(i, j int) bool {
		a, b := order[i], order[j]
		if a.n != b.n {
			return a.n < b.n
		}
		if a.mib != b.mib {
			return a.mib < b.mib
		}
		return trOrder(a.tr) < trOrder(b.tr)
	})
	for _, k := range order {
		x := median(ring[k])
		g, haveG := gloo[key{"", k.n, k.mib}]
		y := median(g)
		ratio := "NA"
		if haveG && y > 0 {
			ratio = fmt.Sprintf("%.2f", x/y)
		}
		t, haveT := tcp[k.n]
		vsTCP := "NA"
		if tcpRow, have := ring[key{"tcp", k.n, k.mib}]; have && k.tr != "tcp" {
			vsTCP = fmt.Sprintf("%.2f", x/median(tcpRow))
		}
		tr := k.tr
		if tr == "" {
			tr = "unknown" // results of a ringbench without the field
		}
		fmt.Printf("bench: allreduce transport=%s n=%d bytes=%d busbw_gbps=%.3f gloo_busbw_gbps=%s ratio=%s vs_tcp_transport=%s tcp_gbps=%s correct=%v repeats=%d\n",
			tr, k.n, k.mib*mib, x, na(y, haveG), ratio, vsTCP, na(t, haveT), ok[k], len(ring[k]))
	}
	return nil
}

// trOrder lists the baseline transport first in the report.
func trOrder(tr string) string {
	if tr == "tcp" {
		return ""
	}
	return tr
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
