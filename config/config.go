// Package config is ringtune's typed configuration: one struct with a
// documented field per setting, the defaults, and a validation that names the
// offending key path. Load reads it from a YAML file, RINGTUNE_* environment
// variables and command-line flags, in increasing order of precedence.
package config

import (
	"time"
)

// Config is the whole configuration of a training run. The coordinator loads
// it; nodes receive the parts they need over the network.
type Config struct {
	Cluster    ClusterConfig    `mapstructure:"cluster"`
	Model      ModelConfig      `mapstructure:"model"`
	Data       DataConfig       `mapstructure:"data"`
	Train      TrainConfig      `mapstructure:"train"`
	AllReduce  AllReduceConfig  `mapstructure:"allreduce"`
	Checkpoint CheckpointConfig `mapstructure:"checkpoint"`
	Metrics    MetricsConfig    `mapstructure:"metrics"`
	Output     OutputConfig     `mapstructure:"output"`
}

// ClusterConfig controls membership: the gossip layer and the control plane.
type ClusterConfig struct {
	// Bind is the host:port the gossip (memberlist) listener binds to.
	Bind string `mapstructure:"bind"`

	// Advertise is the host:port other members use to reach this process's
	// gossip listener. Empty means the bind address (or, for 0.0.0.0, the
	// first private address memberlist finds); set it behind NAT.
	Advertise string `mapstructure:"advertise"`

	// GRPC is the host:port of the coordinator's control-plane gRPC server.
	GRPC string `mapstructure:"grpc"`

	// KeyFile holds the cluster key that encrypts gossip and from which RPC
	// tokens are derived. Required by the coordinator: every gossip message,
	// RPC and ring connection is authenticated with it, even on one machine.
	// Create one with `coordinator keygen cluster.key` and copy it to every
	// node host.
	KeyFile string `mapstructure:"key_file"`

	// MinNodes is the number of settled nodes the coordinator waits for before
	// forming the first world.
	MinNodes int `mapstructure:"min_nodes"`

	// MaxNodes caps the world size; nodes beyond it wait as spares.
	MaxNodes int `mapstructure:"max_nodes"`

	// Settle is how long membership must stay unchanged before the
	// coordinator forms a world, so that a burst of joins forms one
	// generation rather than many. Like every duration it needs a unit
	// (5s, 500ms); a bare number other than 0 is an error.
	Settle time.Duration `mapstructure:"settle"`

	// Label names the cluster; members with a different label are refused, so
	// two runs on one network cannot merge by accident.
	Label string `mapstructure:"label"`

	// WaitTimeout bounds every wait for nodes (the first world's min_nodes,
	// and a new world after the last node died). Past it the coordinator
	// exits with code 4, naming the checkpoint to --resume from. Default
	// 10m; must be > 0.
	WaitTimeout time.Duration `mapstructure:"wait_timeout"`

	// QueueDepth is the number of control messages queued per node session;
	// a node that lets its queue fill is dropped. Bulk state never goes
	// through it (see BulkChunkBytes). Default 4096; must be >= 16.
	QueueDepth int `mapstructure:"queue_depth"`

	// BulkChunkBytes is the chunk size of the bulk state plane, which moves
	// model files, trainer states, checkpoints and the export. Default
	// 1 MiB; 4 KiB to 16 MiB.
	BulkChunkBytes int `mapstructure:"bulk_chunk_bytes"`

	// BulkTimeout is the bulk plane's deadline per chunk: a transfer may
	// take as long as it needs, but one chunk that does not arrive within
	// it fails the transfer. Default 1m; must be > 0.
	BulkTimeout time.Duration `mapstructure:"bulk_timeout"`

	// TLS secures the coordinator's control server and every node's ring
	// server (and whatever else is served on them) with mutual TLS.
	TLS TLSConfig `mapstructure:"tls"`
}

// TLSConfig says where the control plane's and the ring's certificates come
// from. By default (enabled, no files) a CA is derived from the cluster key,
// so nodes need nothing but the key file. With cert, key and ca set (all
// three), every process uses its own certificate signed by that CA; nodes
// then take the same files with `node join --tls-cert/--tls-key/--tls-ca`.
type TLSConfig struct {
	// Enabled turns TLS on (default true). Off sends tokens, model files
	// and state in clear; it exists to measure TLS's cost and for a single
	// trusted machine. Nodes follow the coordinator's choice.
	Enabled bool `mapstructure:"enabled"`
	// Cert is a PEM certificate signed by CA, valid for both server and
	// client authentication.
	Cert string `mapstructure:"cert"`
	// Key is Cert's PEM private key.
	Key string `mapstructure:"key"`
	// CA is the PEM certificate of the CA that signs every process's
	// certificate.
	CA string `mapstructure:"ca"`
}

// Model tasks.
const (
	TaskClassification = "classification"
	TaskRegression     = "regression"
	TaskCausalLM       = "causal_lm"
	// TaskMaskedLM pre-trains BERT with HF's BertForMaskedLM head.
	TaskMaskedLM = "masked_lm"
	// TaskTokenClassification tags each word (HF's
	// BertForTokenClassification), e.g. part of speech.
	TaskTokenClassification = "token_classification"
)

// Model initialisations.
const (
	InitPretrained = "pretrained"
	InitRandom     = "random"
)

// ModelConfig names the model and what it is trained for.
type ModelConfig struct {
	// Path is a Hugging Face model directory (config.json, weights,
	// tokenizer files). Relative paths are resolved against the config file.
	Path string `mapstructure:"path"`

	// Task is classification, regression, causal_lm, masked_lm (BERT
	// pre-training) or token_classification (a label per word); it decides
	// the head, the loss and how labels are read.
	Task string `mapstructure:"task"`

	// NumLabels is the size of the classification head. Zero means derive it:
	// len(labels) (or 2) for classification, 1 for regression, unused for
	// causal_lm.
	NumLabels int `mapstructure:"num_labels"`

	// Labels names the classes in id order; a dataset may then give labels as
	// these strings. Optional; when set its length must equal num_labels.
	Labels []string `mapstructure:"labels"`

	// Init is pretrained (load the weights under path) or random (build the
	// architecture from path/config.json with random initialisation, for
	// when no pretrained weights are available).
	Init string `mapstructure:"init"`
}

// Data formats.
const (
	FormatJSONL = "jsonl"
	FormatCSV   = "csv"
	FormatTSV   = "tsv"
	// FormatTokens is pre-tokenized causal-LM data: JSONL rows with
	// "input_ids" and optionally "labels" (-100 skips a position).
	FormatTokens = "tokens_jsonl"
)

// DataConfig says where the dataset is and how to read and tokenize it.
type DataConfig struct {
	// TrainFile is the training set. Relative to the config file.
	TrainFile string `mapstructure:"train_file"`

	// EvalFile is the evaluation set; empty skips evaluation.
	EvalFile string `mapstructure:"eval_file"`

	// Format is jsonl, csv, tsv or tokens_jsonl. Empty means infer it from
	// train_file's extension (.jsonl/.json, .csv, .tsv). tokens_jsonl (task
	// causal_lm only; never inferred) reads pre-tokenized rows
	// {"input_ids": [...], "labels": [...]}: ids in [0, vocab_size of the
	// model's config.json), labels optional and of the same length, -100
	// where the loss skips a token. Rows longer than max_length are
	// truncated, unless pack is set.
	Format string `mapstructure:"format"`

	// Pack (task causal_lm only; default false) concatenates the texts or
	// pre-tokenized rows into sequences of max_length tokens, each document
	// followed by the end-of-sequence token (eos_token_id of config.json,
	// else the tokenizer's). Documents do not attend to each other and
	// their positions restart at 0; a document longer than max_length is
	// cut into max_length pieces. Each packed sequence counts as one
	// sample (global_batch, the sample ledger).
	Pack bool `mapstructure:"pack"`

	// TextField is the column or JSON key holding the text (for
	// token_classification: a JSON array of words). Unused by
	// tokens_jsonl.
	TextField string `mapstructure:"text_field"`

	// TextPairField, when set, holds the second text of a pair task
	// (entailment, similarity); it is encoded as [CLS] a [SEP] b [SEP].
	TextPairField string `mapstructure:"text_pair_field"`

	// LabelField holds the label: an integer class id, a class name from
	// model.labels, or a number for regression; for token_classification
	// an array of one such class per word. Ignored for causal_lm and
	// masked_lm.
	LabelField string `mapstructure:"label_field"`

	// MaxLength truncates every encoded example to this many tokens,
	// special tokens included. Batches are padded to their longest example.
	MaxLength int `mapstructure:"max_length"`

	// Tokenizer is a file (tokenizer.json, vocab.txt, vocab.json) or a
	// directory holding one. Empty means model.path.
	Tokenizer string `mapstructure:"tokenizer"`

	// MLMProbability is the fraction of tokens masked for task masked_lm
	// (HF's rule: of those, 80% become [MASK], 10% a random token, 10%
	// stay), drawn per (train.seed, epoch, sample). Default 0.15.
	MLMProbability float64 `mapstructure:"mlm_probability"`
}

// Optimizers, schedules, precisions and wire formats.
const (
	OptimizerAdamW = "adamw"
	OptimizerSGD   = "sgd"

	// train.shard_optimizer values.
	ShardNone  = "none"
	ShardZero1 = "zero1"

	ScheduleConstant = "constant"
	ScheduleLinear   = "linear"
	ScheduleCosine   = "cosine"

	PrecisionFP32 = "fp32"
	PrecisionBF16 = "bf16"
)

// TrainConfig holds the optimisation settings.
//
// Batching: global_batch samples make one optimizer step whatever the world
// size. Each of the W ranks gets global_batch/W samples (the first
// global_batch%W ranks one more) and runs them in ceil(share/micro_batch)
// micro-batches, accumulating gradients; the accumulation count is thus
// derived at run time from the world size, which may change after a failure,
// and never changes the update. Hence global_batch must be at least
// micro_batch and at least cluster.min_nodes, but need not be a multiple of
// either.
type TrainConfig struct {
	// Epochs is the number of passes over the training set.
	Epochs int `mapstructure:"epochs"`

	// MaxSteps, when > 0, stops training after this many optimizer steps,
	// even mid-epoch.
	MaxSteps int `mapstructure:"max_steps"`

	// GlobalBatch is the number of samples per optimizer step, summed over
	// all ranks.
	GlobalBatch int `mapstructure:"global_batch"`

	// MicroBatch is the most samples a rank puts through one forward and
	// backward pass; it bounds device memory.
	MicroBatch int `mapstructure:"micro_batch"`

	// Optimizer is adamw or sgd.
	Optimizer string `mapstructure:"optimizer"`

	// LR is the peak learning rate.
	LR float64 `mapstructure:"lr"`

	// Schedule is the learning-rate schedule after warm-up: constant,
	// linear (decay to 0) or cosine (decay to 0).
	Schedule string `mapstructure:"schedule"`

	// WarmupSteps ramps the learning rate linearly from 0 over this many
	// steps. Set at most one of warmup_steps and warmup_ratio.
	WarmupSteps int `mapstructure:"warmup_steps"`

	// WarmupRatio is warm-up as a fraction of the total steps, in [0, 1).
	WarmupRatio float64 `mapstructure:"warmup_ratio"`

	// WeightDecay is decoupled (AdamW) or L2 (SGD) weight decay; biases and
	// LayerNorm weights are exempt.
	WeightDecay float64 `mapstructure:"weight_decay"`

	// Betas are AdamW's two moment decay rates, each in [0, 1).
	Betas []float64 `mapstructure:"betas"`

	// Eps is AdamW's denominator epsilon.
	Eps float64 `mapstructure:"eps"`

	// Momentum is SGD's momentum, in [0, 1).
	Momentum float64 `mapstructure:"momentum"`

	// MaxGradNorm clips the global gradient norm; 0 disables clipping.
	MaxGradNorm float64 `mapstructure:"max_grad_norm"`

	// ShardOptimizer is none (default: every rank holds all of AdamW's
	// moments) or zero1 (ZeRO-1: rank r of N holds the moments of its
	// slice of the flat parameter block, plus a buddy copy of its left
	// neighbour's, 2/N of them; gradients are reduce-scattered, in the
	// allreduce buckets and overlapped with backward as the all-reduce is,
	// each rank updates its slices, parameters are all-gathered). zero1
	// needs adamw.
	// A new generation re-slices the moments from surviving owners and
	// buddies; only the loss of two adjacent ranks together loses state
	// (the run then reloads from the newest checkpoint). Checkpoints hold
	// the full state either way, so a run resumes under the other mode.
	ShardOptimizer string `mapstructure:"shard_optimizer"`

	// Seed drives weight initialisation, data order and dropout; the same
	// seed gives the same run.
	Seed int64 `mapstructure:"seed"`

	// Precision is the compute precision on the nodes: fp32 or bf16.
	Precision string `mapstructure:"precision"`

	// Threads is libtorch's intra-op thread count per node; 0 lets libtorch
	// choose.
	Threads int `mapstructure:"threads"`

	// DropLast drops the last, short global batch of an epoch instead of
	// filling it by repeating samples from the start of the epoch.
	DropLast bool `mapstructure:"drop_last"`

	// EvalEvery evaluates every this many steps; 0 evaluates at epoch ends
	// only.
	EvalEvery int `mapstructure:"eval_every"`

	// DigestEvery compares parameter digests across ranks every this many
	// steps; 0 disables the check.
	DigestEvery int `mapstructure:"digest_every"`
}

// AllReduceConfig tunes the gradient ring.
type AllReduceConfig struct {
	// ChunkBytes is the size of one streamed gradient chunk.
	ChunkBytes int `mapstructure:"chunk_bytes"`

	// Wire is the element type on the wire: fp32, or bf16 to halve traffic
	// at some precision cost.
	Wire string `mapstructure:"wire"`

	// Timeout bounds one all-reduce; a peer silent for longer is declared
	// failed and a new generation is formed. Needs a unit (60s, 2m).
	Timeout time.Duration `mapstructure:"timeout"`

	// Transport carries the ring's bulk data: "tcp" (a raw TCP connection per
	// neighbour, authenticated by an HMAC handshake after the gRPC hello;
	// fastest; the gradient bytes are not encrypted even under
	// cluster.tls, as with gloo and NCCL), "grpc" (the gRPC streams
	// themselves, encrypted under cluster.tls, slower), "shm" (tcp, but
	// neighbours on the same host pass the gradient bytes through a 0600
	// shared-memory segment instead of the socket, one copy fewer per byte
	// on each side; links between hosts, or where /dev/shm is missing,
	// full or of another user, carry them on tcp and log why), or
	// "default" (shm: on one host it moved 1.6-2.2x the bytes per second
	// of tcp, see README's allreduce benchmark).
	Transport string `mapstructure:"transport"`

	// BucketBytes cuts the flat gradient into buckets of about this many
	// bytes (whole parameters; one bigger than this is a bucket of its
	// own), each reduced by its own all-reduce. Default 25 MiB (26214400),
	// PyTorch DDP's bucket_cap_mb. 0 reduces the whole gradient in one
	// operation, and so does a gradient no bigger than one bucket (its
	// buckets by parameter group would all be final only at the end of
	// backward: overlap would hide next to nothing, and each operation
	// adds the ring's latency). Otherwise at least 65536 and a multiple
	// of 4.
	BucketBytes int `mapstructure:"bucket_bytes"`

	// Overlap starts each bucket's all-reduce while backward is still
	// computing the layers below it (on the last micro-batch of a step), so
	// that only the last buckets' reduction is left after backward.
	// Default true. false reduces the same buckets after backward; the
	// weights are bit-identical either way.
	Overlap bool `mapstructure:"overlap"`

	// SparseEmbedding reduces the input embedding's gradient by rows: the
	// step's lookups read a copy of the rows its tokens use, and only
	// those rows (the union over the ranks, agreed by one small reduction
	// before the first forward) are reduced, after backward. A tied
	// embedding (GPT-2's wte, a tied Llama's embed_tokens, BERT
	// masked-LM's word embeddings) keeps the output layer's dense part,
	// which is then final at the start of backward and reduced during it;
	// an untied one (BERT's word embeddings for classification, an untied
	// Llama's) then has no dense part and is not reduced at all. The sum is
	// the same gradient up to the order of the float additions; overlap on
	// and off still give bit-identical weights. Default true: at GPT-2 124M
	// it cuts the comm left after backward (README "Benchmarks", big).
	// It applies only to a matrix of at least bucket_bytes of float32
	// gradient (GPT-2's wte: 154 MB), and not with bucket_bytes 0: it
	// costs two more ring operations a step (the rows' agreement and the
	// rows), which a smaller matrix does not pay for (bench train's 8 MB
	// one). Under train.shard_optimizer zero1 the rows are all-reduced
	// whole and folded into the ranks' slices.
	SparseEmbedding bool `mapstructure:"sparse_embedding"`
}

// CheckpointConfig controls periodic checkpoints.
type CheckpointConfig struct {
	// Dir receives checkpoints. Relative to the config file.
	Dir string `mapstructure:"dir"`

	// Every writes a checkpoint every this many committed steps; 0 writes
	// only the final one.
	Every int `mapstructure:"every"`

	// Keep is how many recent checkpoints to keep; older ones are deleted.
	Keep int `mapstructure:"keep"`

	// Background writes a checkpoint due between two steps while the next
	// step runs (default true): a node's state changes only when a step
	// is applied, so the transfer reads the committed state while forward
	// and backward run, and only the next commit waits for it to end.
	// Training then pauses for what the transfer takes beyond one step,
	// not for all of it; the final checkpoint is written beside the
	// export. false pauses training for every checkpoint. A node whose
	// state is not host memory (CUDA) serves it from its loop, after the
	// step in flight: keep cluster.bulk_timeout above one step's time
	// there (its transfer waits that long for the loop).
	Background bool `mapstructure:"background"`
}

// MetricsConfig controls the coordinator's observability endpoints.
type MetricsConfig struct {
	// Address serves Prometheus metrics at /metrics; empty disables it.
	Address string `mapstructure:"address"`

	// Dashboard serves the live dashboard; empty disables it.
	Dashboard string `mapstructure:"dashboard"`
}

// OutputConfig says where the final model goes.
type OutputConfig struct {
	// Dir receives the final Hugging Face–compatible model directory.
	Dir string `mapstructure:"dir"`
}

// Default returns the configuration used for every key the file, the
// environment and the flags leave unset. It is not valid on its own: model.path
// and data.train_file have no sensible default.
func Default() *Config {
	return &Config{
		Cluster: ClusterConfig{
			Bind:     "0.0.0.0:7946",
			GRPC:     "0.0.0.0:7947",
			MinNodes: 1,
			MaxNodes: 64,
			Settle:   5 * time.Second,
			Label:    "ringtune",

			WaitTimeout:    10 * time.Minute,
			QueueDepth:     4096,
			BulkChunkBytes: 1 << 20,
			BulkTimeout:    time.Minute,
			TLS:            TLSConfig{Enabled: true},
		},
		Model: ModelConfig{
			Task: TaskClassification,
			Init: InitPretrained,
		},
		Data: DataConfig{
			TextField:      "text",
			LabelField:     "label",
			MaxLength:      128,
			MLMProbability: 0.15,
		},
		Train: TrainConfig{
			Epochs:         3,
			GlobalBatch:    32,
			MicroBatch:     8,
			Optimizer:      OptimizerAdamW,
			ShardOptimizer: ShardNone,
			LR:             5e-5,
			Schedule:       ScheduleLinear,
			WeightDecay:    0.01,
			Betas:          []float64{0.9, 0.999},
			Eps:            1e-8,
			MaxGradNorm:    1.0,
			Seed:           42,
			Precision:      PrecisionFP32,
			DigestEvery:    50,
		},
		AllReduce: AllReduceConfig{
			ChunkBytes: 4 << 20,
			Transport:  "default",
			Wire:       PrecisionFP32,
			Timeout:    60 * time.Second,

			BucketBytes:     25 << 20,
			Overlap:         true,
			SparseEmbedding: true,
		},
		Checkpoint: CheckpointConfig{
			Dir:        "checkpoints",
			Keep:       2,
			Background: true,
		},
		Output: OutputConfig{
			Dir: "output",
		},
	}
}
