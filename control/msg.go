// Package control is the coordinator ↔ node control plane of ringtune: the
// versioned messages, their JSON codec, the gRPC service that carries them,
// and the gossip helpers (node metadata, the memberlist key) that both sides
// share.
//
// A node opens one long-lived bidirectional stream, Session, to the
// coordinator and keeps it for its whole life in the cluster. Everything the
// coordinator tells the node (the job, generations, step batches, commits,
// aborts, requests for state, evaluation or export) and everything the node
// reports back travels on it as Msg values, in order. Only small messages
// travel here: model files, trainer states, checkpoints and the export move
// on the bulk plane (package bulk), which a Pull or Exported message only
// names. A broken stream is how
// either side learns that the other is gone. Messages carry the generation
// they belong to; a message of another generation is rejected with an error
// naming both (see CheckGen).
package control

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/data"
)

// Version is the protocol version every Msg carries. A peer speaking another
// version is refused at Hello with an error naming both versions.
//
// Version 3 moved state, model files and the export off the session onto
// the bulk plane (TypeNeed, TypeState, TypeFile, TypeDone, TypeGetState and
// TypeSetState are gone; TypePull, TypeLoaded and TypeExported are new), and
// opens every session with the challenge-response of handshake.go (hello
// carries a nonce; challenge and auth follow).
//
// Version 4: every request carries a request id and every reply echoes it
// (ready, reduced, failed and digest too), and TrainSpec.SparseEmbedding
// adds one all-reduce before a step's first forward and one after its
// buckets: a version-3 node would put the ring out of step, so it is
// refused at Hello.
const Version = 4

// CoordinatorID is the coordinator's gossip name; no node may use it.
const CoordinatorID = "coordinator"

// Message types.
const (
	// node → coordinator
	TypeHello    = "hello"    // first message of a session
	TypeAuth     = "auth"     // the node's proof of the key (handshake)
	TypeReady    = "ready"    // the node has set up / joined a generation
	TypeReduced  = "reduced"  // gradients of a step are all-reduced
	TypeFailed   = "failed"   // a step or request failed on the node
	TypeDigest   = "digest"   // parameter digest after a committed step
	TypeEval     = "evalres"  // evaluation metric sums
	TypeLoaded   = "loaded"   // answer to pull: state of Step loaded, or Error
	TypeExported = "exported" // answer to export: the files, to be pulled from the node
	TypeLeave    = "leave"    // the node was asked to leave (SIGTERM): release it at a step boundary

	// coordinator → node
	TypeChallenge = "challenge" // the coordinator's nonce and proof (handshake)
	TypeJob       = "job"       // the training job and model manifest
	TypeGen       = "gen"       // a new generation: rank, peers
	TypeStep      = "step"      // the micro-batches of one step for this rank
	TypeCommit    = "commit"    // apply step
	TypeAbort     = "abort"     // drop step's gradients
	TypePull      = "pull"      // load the committed state from the bulk source Pull names
	TypeEvalReq   = "eval"      // evaluate these batches
	TypeExport    = "export"    // write the model and list its files (TypeExported)
	TypeStop      = "stop"      // the run is over; leave
)

// Msg is one control-plane message. Exactly the payload field named by Type
// is set (see Validate).
type Msg struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	// Gen is the generation the message belongs to; 0 for messages outside
	// any generation (hello, job, stop).
	Gen uint64 `json:"gen,omitempty"`
	// Step is the global step (0-based, counted over the whole run) a step,
	// commit, abort, reduced, failed or digest message is about.
	Step int `json:"step,omitempty"`

	Hello   *Hello     `json:"hello,omitempty"`
	Job     *Job       `json:"job,omitempty"`
	Ready   *Ready     `json:"ready,omitempty"`
	World   *World     `json:"world,omitempty"`
	Batches []*Batch   `json:"batches,omitempty"`
	Count   int        `json:"count,omitempty"` // global count of step (step, commit)
	Digest  bool       `json:"digest,omitempty"`
	Reduced *Reduced   `json:"reduced,omitempty"`
	Error   string     `json:"error,omitempty"`
	Sum     string     `json:"sum,omitempty"` // hex parameter digest
	Pull    *Pull      `json:"pull,omitempty"`
	Eval    *EvalSums  `json:"eval,omitempty"`
	Req     int        `json:"req,omitempty"` // request id (eval, export)
	Reason  string     `json:"reason,omitempty"`
	Files   []FileInfo `json:"files,omitempty"`
	// Nonce and Proof are the handshake's (challenge: both; auth: Proof).
	Nonce []byte `json:"nonce,omitempty"`
	Proof []byte `json:"proof,omitempty"`
}

// Hello opens a session.
type Hello struct {
	ID      string `json:"id"`
	Device  string `json:"device"`
	Version string `json:"version"`
	Proto   int    `json:"proto"`
	// Applied is the number of committed steps in the node's trainer state,
	// -1 when it has no state (fresh process).
	Applied int `json:"applied"`
	// Nonce is the node's fresh handshake nonce (auth.NonceSize bytes).
	Nonce []byte `json:"nonce"`
}

// FileInfo names one file of the model directory by content hash.
type FileInfo struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Job is what a node needs to set up its trainer: the settings and the model
// manifest (the node pulls the files it lacks from the coordinator's bulk
// service, by content hash).
type Job struct {
	RunID      string     `json:"run_id"`
	Task       string     `json:"task"`
	NumLabels  int        `json:"num_labels"`
	Labels     []string   `json:"labels,omitempty"`
	Init       string     `json:"init"`
	Seed       int64      `json:"seed"`
	Train      TrainSpec  `json:"train"`
	TotalSteps int        `json:"total_steps"`
	Files      []FileInfo `json:"files"`
	ChunkBytes int        `json:"chunk_bytes"`
	Wire       string     `json:"wire"`
	TimeoutMS  int64      `json:"timeout_ms"`
	Transport  string     `json:"transport,omitempty"`
	// BucketBytes and Overlap are allreduce.bucket_bytes and
	// allreduce.overlap: the gradient is reduced in buckets of about
	// BucketBytes (0: one operation), started during backward when Overlap
	// is set. Absent (an older coordinator): one operation after backward.
	BucketBytes int  `json:"bucket_bytes,omitempty"`
	Overlap     bool `json:"overlap,omitempty"`
	// StepTimeoutMS is how long the coordinator waits for a step's answers
	// before it aborts the step. A node waits longer than that for the
	// commit or abort, so that the coordinator always decides first.
	StepTimeoutMS int64 `json:"step_timeout_ms,omitempty"`
	// BulkChunkBytes and BulkTimeoutMS are the bulk plane's chunk size and
	// per-chunk deadline (cluster.bulk_chunk_bytes, cluster.bulk_timeout).
	BulkChunkBytes int   `json:"bulk_chunk_bytes"`
	BulkTimeoutMS  int64 `json:"bulk_timeout_ms"`
}

// Pull tells a node where to get the committed state from: a live rank's
// ring gRPC address (Kind "state") or the coordinator's own address after
// --resume (Kind "checkpoint"); Step is the committed step count it holds.
// SHA256, when set, is the state's known hash (a checkpoint's).
type Pull struct {
	Addr   string `json:"addr"`
	Kind   string `json:"kind"`
	Step   int    `json:"step"`
	SHA256 string `json:"sha256,omitempty"`
}

// TrainSpec is the optimisation part of the configuration a trainer needs.
type TrainSpec struct {
	Optimizer   string    `json:"optimizer"`
	LR          float64   `json:"lr"`
	Schedule    string    `json:"schedule"`
	WarmupSteps int       `json:"warmup_steps"`
	WeightDecay float64   `json:"weight_decay"`
	Betas       []float64 `json:"betas,omitempty"`
	Eps         float64   `json:"eps"`
	Momentum    float64   `json:"momentum"`
	MaxGradNorm float64   `json:"max_grad_norm"`
	// ShardOptimizer is config.ShardNone (or empty) or config.ShardZero1.
	ShardOptimizer string `json:"shard_optimizer,omitempty"`
	Precision      string `json:"precision"`
	Threads        int    `json:"threads"`
	// SparseEmbedding is allreduce.sparse_embedding: a tied embedding's
	// output projection is reduced during backward and its lookups' rows
	// after it (node/agent.RowSplitter). It travels here, with the
	// trainer's settings, because the trainer builds its graph and its
	// gradient segments from it. Absent (an older coordinator): off.
	SparseEmbedding bool `json:"sparse_embedding,omitempty"`
}

// World is one generation as seen by one rank.
type World struct {
	Generation uint64   `json:"generation"`
	Rank       int      `json:"rank"`
	Peers      []string `json:"peers"` // ring gRPC addresses in rank order
	IDs        []string `json:"ids"`   // node ids in rank order
	// Applied is the number of committed steps the generation starts from;
	// a rank whose state differs receives a Pull before the first step.
	Applied int `json:"applied"`
}

// Ready answers a job or a generation.
type Ready struct {
	Params  int `json:"params"`
	Applied int `json:"applied"`
}

// Reduced reports a rank's share of a step once the ring has summed the
// gradients.
type Reduced struct {
	LossSum float64 `json:"loss_sum"`
	Count   int     `json:"count"`
	Samples int     `json:"samples"`
	Tokens  int     `json:"tokens"`
	Seconds float64 `json:"seconds"`
	// Metrics are what the node measured of this step, by name (the
	// Metric* constants; a name ends in _ms for milliseconds, _mb for
	// mebibytes). The coordinator shows every name some node reports, as a
	// column of the dashboard's node table and as the Prometheus series
	// ringtune_node_last_step{node,metric}, so a new measurement needs no
	// other change. Absent from older nodes.
	Metrics map[string]float64 `json:"metrics,omitempty"`
	// Where the rank's communication went, in milliseconds (absent from
	// nodes that predate them): CommMS is the ring's busy time,
	// OverlappedMS the part of it hidden behind backward, ExposedMS the
	// wait from the end of backward to the last bucket reduced. Buckets is
	// the number of all-reduce operations. ApplyMS is how long the rank's
	// optimizer step took for its previous committed step (this step's is
	// not known when reduced is sent).
	CommMS       float64 `json:"comm_ms,omitempty"`
	OverlappedMS float64 `json:"overlapped_ms,omitempty"`
	ExposedMS    float64 `json:"exposed_ms,omitempty"`
	Buckets      int     `json:"buckets,omitempty"`
	ApplyMS      float64 `json:"apply_ms,omitempty"`
	// OptimizerBytes is the optimizer state the node holds (all of
	// AdamW's moments under shard_optimizer none, its slices under zero1);
	// 0 when the node does not say.
	OptimizerBytes int64 `json:"optimizer_bytes,omitempty"`
}

// Names of Reduced.Metrics.
const (
	// MetricComputeMS is the step's forward and backward passes.
	MetricComputeMS = "compute_ms"
	// MetricExposedCommMS is from the end of backward to the last bucket
	// reduced: the communication the step waits for, which is all of it
	// when the all-reduce is not overlapped with backward.
	MetricExposedCommMS = "exposed_comm_ms"
	// MetricOverlappedCommMS is the part of the ring's busy time hidden
	// behind backward (allreduce.overlap).
	MetricOverlappedCommMS = "overlapped_comm_ms"
	// MetricCommMS is the ring's busy time for the step's buckets.
	MetricCommMS = "comm_ms"
	// MetricApplyMS is the optimizer step of the previous committed step,
	// the last one the node applied (a step is applied only after the
	// coordinator commits it, so after this report).
	MetricApplyMS = "apply_ms"
	// MetricRSSMB is the node process's resident memory when it reports.
	MetricRSSMB = "rss_mb"
)

// EvalSums are a rank's metric sums over its evaluation shard; the
// coordinator adds them over ranks before dividing.
type EvalSums struct {
	LossSum float64 `json:"loss_sum"`
	Count   float64 `json:"count"`   // examples (classification/regression) or tokens (causal LM)
	Correct float64 `json:"correct"` // classification
	SqErr   float64 `json:"sq_err"`  // regression
	// Confusion is num_labels×num_labels counts, row = true class, column =
	// predicted (classification only).
	Confusion []float64 `json:"confusion,omitempty"`
}

// Add accumulates o into e.
func (e *EvalSums) Add(o EvalSums) {
	e.LossSum += o.LossSum
	e.Count += o.Count
	e.Correct += o.Correct
	e.SqErr += o.SqErr
	if len(o.Confusion) > len(e.Confusion) {
		e.Confusion = append(e.Confusion, make([]float64, len(o.Confusion)-len(e.Confusion))...)
	}
	for i, v := range o.Confusion {
		e.Confusion[i] += v
	}
}

// Batch is data.Batch on the wire.
type Batch = data.Batch

// CheckGen returns an error naming both generations when a message of
// generation got arrives where want is current.
func CheckGen(from string, want, got uint64) error {
	if got != want {
		return fmt.Errorf("stale message from %s: generation %d, current generation is %d", from, got, want)
	}
	return nil
}

// Validate checks that m is of this protocol version and carries the payload
// its type needs, so that handlers never see a half-formed message.
func (m *Msg) Validate() error {
	if m.V != Version {
		return fmt.Errorf("protocol version %d, want %d: upgrade the older side", m.V, Version)
	}
	need := func(ok bool, what string) error {
		if !ok {
			return fmt.Errorf("%s message without %s", m.Type, what)
		}
		return nil
	}
	switch m.Type {
	case TypeHello:
		if err := need(m.Hello != nil, "hello"); err != nil {
			return err
		}
		if m.Hello.ID == "" {
			return fmt.Errorf("hello message with an empty node id")
		}
		if len(m.Hello.Nonce) != auth.NonceSize {
			return fmt.Errorf("hello message with a %d-byte nonce, want %d", len(m.Hello.Nonce), auth.NonceSize)
		}
		return nil
	case TypeChallenge:
		return need(len(m.Nonce) == auth.NonceSize && len(m.Proof) == auth.ProofSize, "a nonce and a proof")
	case TypeAuth:
		return need(len(m.Proof) == auth.ProofSize, "a proof")
	case TypeJob:
		return need(m.Job != nil, "job")
	case TypeReady:
		return need(m.Ready != nil, "ready payload")
	case TypeGen:
		if err := need(m.World != nil, "world"); err != nil {
			return err
		}
		w := m.World
		if w.Generation == 0 || w.Generation != m.Gen || w.Rank < 0 || w.Rank >= len(w.Peers) || len(w.IDs) != len(w.Peers) {
			return fmt.Errorf("gen message with inconsistent world (generation %d/%d, rank %d of %d peers, %d ids)", m.Gen, w.Generation, w.Rank, len(w.Peers), len(w.IDs))
		}
		return nil
	case TypeStep:
		if m.Gen == 0 || m.Count <= 0 {
			return fmt.Errorf("step message without generation or global count")
		}
		return nil
	case TypeCommit:
		return need(m.Gen > 0 && m.Count > 0, "generation and global count")
	case TypeReduced:
		return need(m.Reduced != nil && m.Gen > 0, "reduced payload and generation")
	case TypePull:
		if err := need(m.Pull != nil && m.Gen > 0, "pull payload and generation"); err != nil {
			return err
		}
		if m.Pull.Addr == "" || (m.Pull.Kind != "state" && m.Pull.Kind != "checkpoint") {
			return fmt.Errorf("pull message with address %q and kind %q (want state or checkpoint)", m.Pull.Addr, m.Pull.Kind)
		}
		return nil
	case TypeEval:
		return need(m.Eval != nil, "eval sums")
	case TypeDigest:
		return need(m.Sum != "", "sum")
	case TypeExported:
		return need(m.Req > 0, "request id")
	case TypeFailed, TypeAbort, TypeEvalReq, TypeExport, TypeStop, TypeLoaded, TypeLeave:
		return nil
	}
	return fmt.Errorf("unknown message type %q", m.Type)
}

// Float32Bytes encodes values little-endian.
func Float32Bytes(v []float32) []byte {
	out := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
	}
	return out
}

// BytesFloat32 decodes little-endian float32 values.
func BytesFloat32(b []byte) ([]float32, error) {
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("float32 data of %d bytes is not a multiple of 4", len(b))
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

// EncodeState lays out a trainer state for the wire and for checkpoints:
// little-endian uint64 parameter count, uint64 optimizer-state count, uint64
// optimizer steps, then the parameters and the optimizer state as float32.
func EncodeState(params, optim []float32, steps int) []byte {
	out := make([]byte, 24, 24+4*(len(params)+len(optim)))
	binary.LittleEndian.PutUint64(out[0:], uint64(len(params)))
	binary.LittleEndian.PutUint64(out[8:], uint64(len(optim)))
	binary.LittleEndian.PutUint64(out[16:], uint64(steps))
	out = append(out, Float32Bytes(params)...)
	return append(out, Float32Bytes(optim)...)
}

// DecodeState is the inverse of EncodeState.
func DecodeState(b []byte) (params, optim []float32, steps int, err error) {
	if len(b) < 24 {
		return nil, nil, 0, fmt.Errorf("state of %d bytes is shorter than its 24-byte header", len(b))
	}
	np := binary.LittleEndian.Uint64(b[0:])
	no := binary.LittleEndian.Uint64(b[8:])
	steps = int(binary.LittleEndian.Uint64(b[16:]))
	if uint64(len(b)-24) != 4*(np+no) {
		return nil, nil, 0, fmt.Errorf("state holds %d bytes after its header, want %d for %d parameters and %d optimizer values", len(b)-24, 4*(np+no), np, no)
	}
	if params, err = BytesFloat32(b[24 : 24+4*np]); err != nil {
		return nil, nil, 0, err
	}
	if optim, err = BytesFloat32(b[24+4*np:]); err != nil {
		return nil, nil, 0, err
	}
	return params, optim, steps, nil
}
