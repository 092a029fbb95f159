package allreduce

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestWavefrontOrderInMemory runs every rank's send and receive schedules
// in wavefront order without a network, the way the ring does: a rank sends
// its next chunk only once the chunk it forwards has been received and
// applied, messages queue without limit (a socket), and each receiver checks
// that what arrives is exactly the next chunk of its own receive order. It
// pins that the orders of neighbours agree, that every chunk is walked once,
// that no lag deadlocks, and that the sums come out right for every kind.
func TestWavefrontOrderInMemory(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	kinds := []Kind{KindAllReduce, KindReduceScatter, KindReduceScatterBuddy, KindAllGather}
	for n := 2; n <= 6; n++ {
		for _, length := range []int{0, 1, n + 1, 97, 1000} {
			for _, chunk := range []int{1, 3, 64} {
				for _, lag := range []int{0, 1, 2, 5, 1 << 24} { // 0: the lag newPartPlan derives
					for _, k := range kinds {
						name := fmt.Sprintf("n=%d len=%d chunk=%d lag=%d %v", n, length, chunk, lag, k)
						runOrder(t, name, rng, n, length, chunk, lag, k)
					}
				}
			}
		}
	}
}

type orderMsg struct {
	t, c int
	data []float32
}

func runOrder(t *testing.T, name string, rng *rand.Rand, n, length, chunk, lag int, k Kind) {
	t.Helper()
	bufs, ref, abs := randomBufs(rng, n, length)
	orig := make([][]float32, n)
	for r := range bufs {
		orig[r] = append([]float32(nil), bufs[r]...)
	}
	plans := make([]plan, n)
	sends := make([]order, n)
	recvs := make([]order, n)
	got := make([][]int, n) // chunks received per step, like Op.stepRecvd
	queues := make([][]orderMsg, n)
	pending := make([]bool, n) // sends[r] holds a chunk waiting for its dependency
	var pt, pc [8]int
	for r := range n {
		plans[r] = opPlan(k, length, n, r, chunk)
		if lag > 0 {
			plans[r].lag = lag
		}
		sends[r], recvs[r] = plans[r].sendOrder(), plans[r].recvOrder()
		got[r] = make([]int, len(plans[r].recvN))
	}
	for r := range n {
		if l := mod(r-1, n); plans[r].totalRecv() != plans[l].totalSend() || plans[r].lag != plans[l].lag {
			t.Fatalf("%s: rank %d receives %d chunks at lag %d, left sends %d at lag %d", name, r, plans[r].totalRecv(), plans[r].lag, plans[l].totalSend(), plans[l].lag)
		}
	}
	sent := make([]map[[2]int]bool, n)
	for r := range sent {
		sent[r] = map[[2]int]bool{}
	}
	for {
		progress := false
		for r := range n {
			p := plans[r]
			// Send as far as dependencies allow.
			for pending[r] || sends[r].left > 0 {
				if !pending[r] {
					pt[r], pc[r] = sends[r].next()
					pending[r] = true
					if sent[r][[2]int{pt[r], pc[r]}] {
						t.Fatalf("%s: rank %d sends step %d chunk %d twice", name, r, pt[r], pc[r])
					}
					sent[r][[2]int{pt[r], pc[r]}] = true
				}
				if tt := pt[r]; tt > p.t0 && got[r][tt-1-p.t0] <= pc[r] {
					break // waits for the chunk it forwards
				}
				lo, hi := p.sendSeg(pt[r])
				a, b := p.chunkRange(lo, hi, pc[r])
				queues[mod(r+1, n)] = append(queues[mod(r+1, n)], orderMsg{pt[r], pc[r], append([]float32(nil), bufs[r][a:b]...)})
				pending[r] = false
				progress = true
			}
			// Receive everything queued.
			for len(queues[r]) > 0 {
				m := queues[r][0]
				queues[r] = queues[r][1:]
				if recvs[r].left == 0 {
					t.Fatalf("%s: rank %d got step %d chunk %d after its last chunk", name, r, m.t, m.c)
				}
				wt, wc := recvs[r].next()
				if m.t != wt || m.c != wc {
					t.Fatalf("%s: rank %d got step %d chunk %d, its receive order wants step %d chunk %d", name, r, m.t, m.c, wt, wc)
				}
				lo, hi := p.recvSeg(m.t)
				a, b := p.chunkRange(lo, hi, m.c)
				ph, _ := p.phaseStep(m.t)
				s := sink{dst: bufs[r][a:b], wire: Float32, add: ph == ReduceScatter}
				s.write(f32bytes(m.data))
				if !s.done() {
					t.Fatalf("%s: rank %d: step %d chunk %d has %d elements for %d", name, r, m.t, m.c, len(m.data), b-a)
				}
				if got[r][m.t-p.t0] != m.c {
					t.Fatalf("%s: rank %d: step %d chunk %d arrived after %d chunks of that step", name, r, m.t, m.c, got[r][m.t-p.t0])
				}
				got[r][m.t-p.t0]++
				progress = true
			}
		}
		if !progress {
			break
		}
	}
	for r := range n {
		if pending[r] || sends[r].left > 0 || recvs[r].left > 0 {
			t.Fatalf("%s: deadlock: rank %d has %d chunks left to send, %d to receive", name, r, sends[r].left, recvs[r].left)
		}
		if len(sent[r]) != plans[r].totalSend() {
			t.Fatalf("%s: rank %d sent %d distinct chunks, plan has %d", name, r, len(sent[r]), plans[r].totalSend())
		}
	}
	tol := f32tol(n)
	switch k {
	case KindAllReduce:
		checkResult(t, bufs, ref, abs, tol)
	case KindReduceScatter, KindReduceScatterBuddy:
		for r := range n {
			lo, hi := Slice(length, n, r)
			checkSlice(t, fmt.Sprintf("%s rank %d", name, r), bufs[r], lo, hi, ref, abs, tol)
			if k == KindReduceScatterBuddy {
				lo, hi = Slice(length, n, r-1)
				checkSlice(t, fmt.Sprintf("%s buddy of rank %d", name, r), bufs[r], lo, hi, ref, abs, tol)
			}
		}
	case KindAllGather:
		for r := range n {
			for s := range n {
				lo, hi := Slice(length, n, s)
				for i := lo; i < hi; i++ {
					if bufs[r][i] != orig[s][i] {
						t.Fatalf("%s: rank %d element %d is %v, owner rank %d has %v", name, r, i, bufs[r][i], s, orig[s][i])
					}
				}
			}
		}
	}
}
