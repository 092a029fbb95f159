package agent

import (
	"io"

	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
)

// Trainer is the model side of a node (libtorch in node/, pure Go in tests).
//
// The agent calls every method from one goroutine and never two at once, so
// an implementation bound to one OS thread (libtorch) needs no locking of
// its own. Per step the agent calls Accumulate once per micro-batch, then
// all-reduces Gradients() in place (summing over ranks), and then either
// Apply (the step was committed) or Discard (it was aborted).
type Trainer interface {
	// Setup builds the model from job.ModelDir (a Hugging Face directory
	// whose files the coordinator streamed to this node) and the optimizer,
	// and returns the number of parameters, the length of Gradients(). With
	// job.Init "random" it must initialise from job.Seed alone, so that
	// every node holds bit-identical weights (the first digest check
	// verifies it).
	Setup(job Job) (params int, err error)

	// Accumulate runs forward and backward on one micro-batch and adds the
	// gradient of the summed (not averaged) loss into the flat gradient. It
	// returns the loss sum and the number of terms in it (samples, or target
	// tokens for causal LM).
	Accumulate(b *data.Batch) (lossSum float64, count int, err error)

	// Gradients is the flat gradient of all parameters, summed over this
	// step's micro-batches. The agent all-reduces it in place; the slice
	// must stay valid and unmoved until Apply or Discard.
	// An error (a failed device-to-host copy, say) fails the step before
	// anything is sent, so no rank sums stale gradients.
	Gradients() ([]float32, error)

	// Apply finishes committed step (0-based over the run): divide the
	// all-reduced gradient by globalCount (the step's samples or tokens
	// over all ranks), clip to max_grad_norm, take an optimizer step with
	// the schedule's learning rate for step, and zero the gradient.
	Apply(step, globalCount int) error

	// Discard zeroes the gradient of an aborted step, leaving parameters
	// and optimizer state as they were.
	Discard() error

	// Digest is a hash of the parameters (and optimizer state) that is equal
	// on two replicas exactly when they are bit-identical.
	Digest() ([]byte, error)

	// WriteState streams the complete training state to w in
	// control.EncodeState's layout (control.WriteStateHeader, then the
	// parameters in Gradients() order, then the optimizer's per-parameter
	// buffers: AdamW's two moments, SGD's momentum; the header carries the
	// optimizer's step count). It writes from the trainer's own buffers in
	// bounded pieces: no copy of the whole state is made, so w sees the
	// state as it is until WriteState returns (the agent applies no step
	// meanwhile). Checkpoints, exports of state and stale ranks use it
	// through the bulk plane.
	WriteState(w io.Writer) error

	// ReadState replaces the training state with one in that layout read
	// from r, exactly its length (the agent checks that r ends there). The
	// header's sizes are checked before anything is overwritten; an error
	// after that leaves the state undefined, and the agent then treats the
	// trainer as holding no committed state.
	ReadState(r io.Reader) error

	// Evaluate runs one evaluation micro-batch without touching the
	// gradient and returns its metric sums.
	Evaluate(b *data.Batch) (control.EvalSums, error)

	// Export writes the model as a Hugging Face directory (config.json,
	// weights, tokenizer files) into dir, which exists and is empty.
	Export(dir string) error

	// Close frees the model.
	Close() error
}

// Overlapper is implemented by trainers that can say, while backward runs,
// which parts of the gradient are final, so that the agent all-reduces them
// in buckets during backward (allreduce.overlap; see package bucket). The
// agent uses it on the last micro-batch of a step only: earlier micro-batches
// still add into the gradient.
type Overlapper interface {
	// GradSegments describes the gradient as one segment per parameter,
	// tiling [0, params), listed in the order backward is expected to finish
	// them (see bucket.NewPlan). It is fixed after Setup.
	GradSegments() []bucket.Segment

	// GradBuffer is the buffer the all-reduce sums in place: the slice
	// Gradients returns (on CUDA, the host block that both Gradients and
	// AccumulateReady copy into), without copying anything. Valid until
	// Close.
	GradBuffer() []float32

	// AccumulateReady is Accumulate for a step's last micro-batch. While
	// backward runs it calls ready(i), from any goroutine, as soon as
	// segment i's gradient summed over the step's micro-batches is final in
	// GradBuffer; when it returns without error it has called ready exactly
	// once for every segment, including those backward did not reach.
	AccumulateReady(b *data.Batch, ready func(seg int)) (lossSum float64, count int, err error)
}

// Job is what Setup gets.
type Job struct {
	// ModelDir holds the model directory's files, by their names.
	ModelDir  string
	Task      string // config.Task*
	NumLabels int
	Labels    []string
	Init      string // config.Init*
	Seed      int64
	Device    string // e.g. cpu, cuda:0
	// Train holds optimizer, schedule, clipping, precision and threads.
	Train control.TrainSpec
	// TotalSteps is the number of optimizer steps of the run, for the
	// learning-rate schedule.
	TotalSteps int
	// SplitMinBytes is the smallest embedding matrix, in bytes of its
	// float32 gradient, that the trainer splits by rows when
	// Train.SparseEmbedding asks for it (RowSplitter); 0 splits any. The
	// split costs two more ring operations a step (the rows' agreement
	// before the first forward, and the rows after backward), which pay
	// only when the matrix is big next to the ring's latency: the agent
	// passes allreduce.bucket_bytes, so a matrix smaller than one bucket
	// is reduced with the rest of the gradient (setupTrainer).
	SplitMinBytes int
	// Rank and WorldSize describe the first generation the node joins
	// (they can change later; a trainer should not depend on them for
	// anything that must stay identical across replicas).
	Rank, WorldSize int
}

// Factory makes a fresh Trainer for one run.
type Factory func() (Trainer, error)

// LoadReporter is implemented by trainers that can say what a pretrained
// load did (tensors loaded, newly initialised, ignored); the agent logs it.
type LoadReporter interface {
	LoadReport() string
}

// RowSplitter is implemented by trainers that reduce a tied embedding's
// input lookups apart from the rest of the gradient (allreduce.
// sparse_embedding; see model/hf's rows.go): the output projection's part
// of the matrix stays in the flat gradient and is final at the start of
// backward, and the lookups' part covers only the rows the step's tokens
// used, reduced after backward as one small extra operation
// (bucket.Reduce.Append). Under zero1 the rows are all-reduced whole after
// the reduce-scattered buckets, and the trainer folds them into its slices
// before it takes their sum of squares (ShardTrainer.SliceSumSq).
type RowSplitter interface {
	// SplitRows is the number of rows of the split matrix (the
	// vocabulary), or 0 when the trainer does not split: then the step
	// runs as without this interface. Fixed after Setup.
	SplitRows() int

	// MarkRows sets used[row] to a positive value for every row b's input
	// lookups read (len(used) is SplitRows()).
	MarkRows(b *data.Batch, used []float32)

	// BeginRows starts a step whose lookups read only rows (ascending,
	// distinct: the union over every rank's micro-batches, the same on
	// every rank). Called before the step's first Accumulate.
	BeginRows(rows []int64) error

	// RowGradients is the lookups' gradient of the step's rows, row after
	// row, summed over its micro-batches, after the last backward. The
	// agent all-reduces it in place; Apply adds it into the gradient
	// before the optimizer step, and Discard drops it. The slice must stay
	// valid and unmoved until then.
	RowGradients() ([]float32, error)
}
