package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
)

// planTrainer is countTrainer with a gradient of 4 parameters of 64 Ki
// floats each (1 MiB in all), described for the buckets, whose embedding
// split it reports as asked; it records the Job Setup got.
type planTrainer struct {
	countTrainer
	job Job
}

const planParams = 4 << 16

func (t *planTrainer) Setup(j Job) (int, error) {
	t.job = j
	return planParams, nil
}

// GradSegments: the head first, the embedding (group 1) last, as a
// model's are.
func (t *planTrainer) GradSegments() []bucket.Segment {
	q := planParams / 4
	return []bucket.Segment{
		{Off: 3 * q, Len: q, Order: 0}, {Off: 2 * q, Len: q, Order: 1},
		{Off: q, Len: q, Order: 2}, {Off: 0, Len: q, Order: 3, Group: 1},
	}
}
func (t *planTrainer) GradBuffer() []float32 { return make([]float32, planParams) }
func (t *planTrainer) AccumulateReady(*data.Batch, func(int)) (float64, int, error) {
	return 1, 1, nil
}
func (t *planTrainer) SplitRows() int {
	if t.job.Train.SparseEmbedding {
		return 10
	}
	return 0
}
func (t *planTrainer) MarkRows(*data.Batch, []float32) {}
func (t *planTrainer) BeginRows([]int64) error         { return nil }
func (t *planTrainer) RowGradients() ([]float32, error) {
	return nil, nil
}

// planSession is a session whose job (allreduce.bucket_bytes bucketBytes,
// overlap and sparse_embedding on) has set up a planTrainer.
func planSession(t *testing.T, bucketBytes int) (*session, *planTrainer) {
	t.Helper()
	tr := &planTrainer{countTrainer: countTrainer{calls: map[string]int{}}}
	key := make(auth.Key, 32)
	a := &Agent{cfg: Config{Key: key, Name: "n0", CacheDir: t.TempDir(), CommitTimeout: time.Minute}, factory: func() (Trainer, error) { return tr, nil },
		log: slog.New(slog.NewTextHandler(discardW{}, nil))}
	srv, err := allreduce.NewServer(key)
	if err != nil {
		t.Fatal(err)
	}
	h := newHub()
	bs, err := bulk.NewServer(key, h.source, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := &session{a: a, st: &countStream{}, ringSrv: srv, hub: h, bulkSrv: bs, applied: -1, watch: newRingWatch()}
	t.Cleanup(func() { s.release(nil) })
	if err := s.startMachine(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(modelFile)
	if err := os.WriteFile(filepath.Join(a.cfg.CacheDir, hex.EncodeToString(sum[:])), modelFile, 0o644); err != nil {
		t.Fatal(err)
	}
	job := fuzzJob()
	job.BucketBytes, job.Overlap, job.Train.SparseEmbedding = bucketBytes, true, true
	if err := s.handle(&control.Msg{Type: control.TypeJob, Job: job}); err != nil {
		t.Fatal(err)
	}
	if s.plan == nil {
		t.Fatalf("bucket_bytes %d: the job set up no bucket plan", bucketBytes)
	}
	return s, tr
}

// TestPlanWholeGradientInOneBucket: a gradient no bigger than one bucket
// is reduced whole in one operation after backward (no overlap, so no
// hooks); a bigger one keeps its buckets and overlap. The embedding split
// is asked of the trainer only for matrices of at least one bucket
// (Job.SplitMinBytes), and not at all with one operation for the whole
// gradient (bucket_bytes 0).
func TestPlanWholeGradientInOneBucket(t *testing.T) {
	for _, c := range []struct {
		bucketBytes, buckets int
		overlap, split       bool
	}{
		{4 * planParams, 1, false, true},    // fits exactly: one operation
		{64 << 20, 1, false, true},          // the default's case for a small model
		{4*planParams - 4, 2, true, true},   // one float too big: the blocks, the embedding apart
		{4 * planParams / 4, 4, true, true}, // a bucket per parameter
		{0, 1, false, false},                // one operation asked for: no split
		{4*planParams/2 + 4, 3, true, true}, // two blocks share a bucket, the embedding apart
	} {
		s, tr := planSession(t, c.bucketBytes)
		if got := len(s.plan.Buckets); got != c.buckets {
			t.Errorf("bucket_bytes %d: %d buckets, want %d", c.bucketBytes, got, c.buckets)
		}
		if got := s.ov != nil; got != c.overlap {
			t.Errorf("bucket_bytes %d: overlap %v, want %v", c.bucketBytes, got, c.overlap)
		}
		if tr.job.SplitMinBytes != c.bucketBytes {
			t.Errorf("bucket_bytes %d: the trainer got SplitMinBytes %d", c.bucketBytes, tr.job.SplitMinBytes)
		}
		if tr.job.Train.SparseEmbedding != c.split {
			t.Errorf("bucket_bytes %d: the trainer got sparse_embedding %v, want %v", c.bucketBytes, tr.job.Train.SparseEmbedding, c.split)
		}
	}
}
