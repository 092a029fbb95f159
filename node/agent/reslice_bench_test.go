package agent

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
)

// gpt2Params is GPT-2 124M's parameter count (the flat block's length).
const gpt2Params = 124_439_808

// BenchmarkReslice times a zero1 re-slice of a GPT-2 124M-sized block
// (plain-memory state, real loopback rings, one process) against moving
// all of the state (three float32 all-reduces of the block, as every
// re-slice did before the move list), A/B alternated in the same run, for
// 3 -> 2 (rank 1 lost, clean survivors) and 2 -> 3 (a joiner).
// scripts/bench.sh reslice runs it with -benchtime 1x.
func BenchmarkReslice(b *testing.B) {
	for _, c := range []struct {
		name string
		size int
		olds []old
	}{
		{"3to2", 3, []old{{rank: 0}, {rank: 2}}},
		{"2to3", 2, []old{{rank: 0}, {rank: 1}, {rank: -1}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var moved, full []float64
			var st, fst ResliceStats
			for range 3 {
				d, s := benchReslice(b, c.size, c.olds, false)
				moved, st = append(moved, d), s
				d, s = benchReslice(b, c.size, c.olds, true)
				full, fst = append(full, d), s
			}
			m, f := median(moved), median(full)
			b.ReportMetric(m, "s")
			b.ReportMetric(f, "full-s")
			b.ReportMetric(m/f, "ratio")
			b.ReportMetric(float64(4*st.MovedFloats()), "moved-bytes")
			b.ReportMetric(float64(4*st.SentFloats), "sent-bytes")
			b.ReportMetric(float64(4*fst.MovedFloats()), "full-bytes")
			b.ReportMetric(float64(4*fst.SentFloats), "full-sent-bytes")
		})
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchReslice runs one re-slice of np = gpt2Params from olds (each new
// rank's old rank in a layout of size) and returns its wall time and what
// it moved; full moves all of the state instead.
func benchReslice(b *testing.B, size int, olds []old, full bool) (float64, ResliceStats) {
	n := len(olds)
	fakes := make([]*fakeShard, n)
	infos := make([]ShardInfo, n)
	for r, o := range olds {
		f := &fakeShard{params: make([]float32, gpt2Params)}
		infos[r] = ShardInfo{Applied: 0}
		if o.rank >= 0 {
			_ = f.Reshard(o.rank, size)
			infos[r] = ShardInfo{Valid: true, Gen: 1, Rank: o.rank, Size: size, Applied: 3}
		} else {
			_ = f.Reshard(0, 0)
		}
		fakes[r] = f
	}
	rings := benchRings(b, n)
	defer func() {
		var wg sync.WaitGroup
		for _, r := range rings {
			wg.Go(func() { r.Close() })
		}
		wg.Wait()
		runtime.GC()
	}()
	errs := make([]error, n)
	stats := make([]ResliceStats, n)
	var wg sync.WaitGroup
	start := time.Now()
	for r := range n {
		wg.Go(func() {
			if !full {
				_, stats[r], errs[r] = ResliceWithStats(context.Background(), rings[r], fakes[r], infos[r])
				return
			}
			stats[r], errs[r] = resliceFull(context.Background(), rings[r], fakes[r], infos[r])
		})
	}
	wg.Wait()
	d := time.Since(start).Seconds()
	for r, err := range errs {
		if err != nil {
			b.Fatalf("rank %d: %v", r, err)
		}
	}
	return d, stats[0]
}

// resliceFull is the re-slice that moves all of the state, every element of
// the parameters and both moments from its old slice's owner (else buddy),
// by float32 all-reduces of 16 MiB pieces one at a time: what Reslice did
// before it moved only what changed hands, the peer of BenchmarkReslice.
func resliceFull(ctx context.Context, ring *allreduce.Ring, tr ShardTrainer, mine ShardInfo) (ResliceStats, error) {
	n := ring.Size()
	infos := make([]float32, shardInfoLen*n)
	mine.encode(infos[shardInfoLen*ring.Rank():])
	if err := ring.AllGather(ctx, infos); err != nil {
		return ResliceStats{}, err
	}
	all := make([]ShardInfo, n)
	for r := range n {
		all[r] = decodeShardInfo(infos[shardInfoLen*r:])
	}
	np := tr.NumParams()
	p, err := planReslice(all, np)
	if err != nil {
		return ResliceStats{}, err
	}
	p.segs, p.slots, p.slotLen, p.depth = nil, 1, 0, 1
	for block := range 3 {
		for k := range p.best.Size {
			lo, hi := allreduce.Slice(np, p.best.Size, k)
			p.segs = append(p.segs, moveSeg{block: block, lo: lo, hi: hi, src: p.cands[k][0], off: p.slotLen})
			p.slotLen += hi - lo
		}
	}
	if err := p.run(ctx, ring, tr); err != nil {
		return ResliceStats{}, err
	}
	return p.stats(np), nil
}

// benchRings is testRings for a benchmark, with the ring's default chunk.
func benchRings(b *testing.B, n int) []*allreduce.Ring {
	key, err := auth.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	ls := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range ls {
		if ls[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			b.Fatal(err)
		}
		addrs[i] = ls[i].Addr().String()
	}
	rings := make([]*allreduce.Ring, n)
	for i := range rings {
		r, err := allreduce.New(allreduce.Config{Generation: 2, Rank: i, Peers: addrs, Listener: ls[i], Key: key, Timeout: 5 * time.Minute})
		if err != nil {
			b.Fatal(fmt.Errorf("rank %d: %w", i, err))
		}
		rings[i] = r
	}
	return rings
}
