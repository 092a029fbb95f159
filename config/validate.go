package config

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Validate checks every field and the relations between fields. It returns
// all problems at once (joined with errors.Join), each naming its key path,
// e.g. "train.micro_batch: must be > 0, got 0". Call it after any change made
// in code; Load already does.
func (c *Config) Validate() error {
	var v validator

	// cluster
	v.hostPort("cluster.bind", c.Cluster.Bind, true)
	v.hostPort("cluster.advertise", c.Cluster.Advertise, false)
	v.hostPort("cluster.grpc", c.Cluster.GRPC, true)
	v.positive("cluster.min_nodes", c.Cluster.MinNodes)
	v.positive("cluster.max_nodes", c.Cluster.MaxNodes)
	if c.Cluster.MinNodes > 0 && c.Cluster.MaxNodes > 0 && c.Cluster.MinNodes > c.Cluster.MaxNodes {
		v.add("cluster.max_nodes", "must be >= cluster.min_nodes (%d), got %d", c.Cluster.MinNodes, c.Cluster.MaxNodes)
	}
	if c.Cluster.Settle < 0 {
		v.add("cluster.settle", "must be >= 0, got %s", c.Cluster.Settle)
	}
	if c.Cluster.Label == "" {
		v.add("cluster.label", "must not be empty")
	}
	if c.Cluster.WaitTimeout <= 0 {
		v.add("cluster.wait_timeout", "must be > 0 (e.g. 10m), got %s", c.Cluster.WaitTimeout)
	}
	if c.Cluster.QueueDepth < 16 {
		v.add("cluster.queue_depth", "must be >= 16, got %d", c.Cluster.QueueDepth)
	}
	if b := c.Cluster.BulkChunkBytes; b < 4<<10 || b > 16<<20 {
		v.add("cluster.bulk_chunk_bytes", "must be between 4096 and 16777216 (4 KiB to 16 MiB), got %d", b)
	}
	if c.Cluster.BulkTimeout <= 0 {
		v.add("cluster.bulk_timeout", "must be > 0 (e.g. 1m), got %s", c.Cluster.BulkTimeout)
	}
	if t := c.Cluster.TLS; t.Cert != "" || t.Key != "" || t.CA != "" {
		for _, f := range []struct{ key, val string }{{"cluster.tls.cert", t.Cert}, {"cluster.tls.key", t.Key}, {"cluster.tls.ca", t.CA}} {
			if f.val == "" {
				v.add(f.key, "must be set when any of cluster.tls.cert, cluster.tls.key, cluster.tls.ca is (give all three, or none to derive the certificates from the cluster key)")
			}
		}
		if !t.Enabled {
			v.add("cluster.tls.enabled", "is false but certificate files are given; remove them or enable TLS")
		}
	}

	// model
	v.required("model.path", c.Model.Path)
	v.oneOf("model.task", c.Model.Task, TaskClassification, TaskRegression, TaskCausalLM, TaskMaskedLM, TaskTokenClassification)
	v.oneOf("model.init", c.Model.Init, InitPretrained, InitRandom)
	switch c.Model.Task {
	case TaskClassification, TaskTokenClassification:
		if c.Model.NumLabels < 2 {
			v.add("model.num_labels", "must be >= 2 for task %s, got %d", c.Model.Task, c.Model.NumLabels)
		}
	case TaskRegression:
		if c.Model.NumLabels != 1 {
			v.add("model.num_labels", "must be 1 for task regression, got %d", c.Model.NumLabels)
		}
		if len(c.Model.Labels) > 0 {
			v.add("model.labels", "must be empty for task regression, got %d names", len(c.Model.Labels))
		}
	case TaskCausalLM, TaskMaskedLM:
		if len(c.Model.Labels) > 0 {
			v.add("model.labels", "must be empty for task %s, got %d names", c.Model.Task, len(c.Model.Labels))
		}
	}
	if c.Model.Task == TaskMaskedLM && !(c.Data.MLMProbability > 0 && c.Data.MLMProbability < 1) {
		v.add("data.mlm_probability", "must be in (0, 1) for task masked_lm, got %v", c.Data.MLMProbability)
	}
	if (c.Model.Task == TaskClassification || c.Model.Task == TaskTokenClassification) && len(c.Model.Labels) > 0 {
		if len(c.Model.Labels) != c.Model.NumLabels {
			v.add("model.labels", "has %d names but model.num_labels is %d; give one name per class", len(c.Model.Labels), c.Model.NumLabels)
		}
		seen := map[string]int{}
		for i, l := range c.Model.Labels {
			if l == "" {
				v.add(fmt.Sprintf("model.labels[%d]", i), "must not be empty")
			} else if j, dup := seen[l]; dup {
				v.add(fmt.Sprintf("model.labels[%d]", i), "duplicates model.labels[%d] (%q)", j, l)
			}
			seen[l] = i
		}
	}

	// data
	v.required("data.train_file", c.Data.TrainFile)
	if c.Data.Format == "" {
		v.add("data.format", "cannot be inferred from data.train_file %q; set jsonl, csv or tsv", c.Data.TrainFile)
	} else {
		v.oneOf("data.format", c.Data.Format, FormatJSONL, FormatCSV, FormatTSV, FormatTokens)
	}
	if c.Data.Format == FormatTokens && c.Model.Task != TaskCausalLM {
		v.add("data.format", "tokens_jsonl is pre-tokenized causal-LM data: it needs model.task causal_lm, got %q", c.Model.Task)
	}
	if c.Data.Pack && c.Model.Task != TaskCausalLM {
		v.add("data.pack", "packing is for model.task causal_lm only, got %q; set data.pack false", c.Model.Task)
	}
	if c.Data.Format != FormatTokens {
		v.required("data.text_field", c.Data.TextField)
	}
	if c.Model.Task != TaskCausalLM && c.Model.Task != TaskMaskedLM {
		v.required("data.label_field", c.Data.LabelField)
	}
	if c.Data.TextPairField != "" && c.Data.TextPairField == c.Data.TextField {
		v.add("data.text_pair_field", "must differ from data.text_field (%q)", c.Data.TextField)
	}
	if c.Data.MaxLength < 8 {
		v.add("data.max_length", "must be >= 8 (room for special tokens and text), got %d", c.Data.MaxLength)
	}

	// train
	v.positive("train.epochs", c.Train.Epochs)
	v.nonNegative("train.max_steps", c.Train.MaxSteps)
	v.positive("train.global_batch", c.Train.GlobalBatch)
	v.positive("train.micro_batch", c.Train.MicroBatch)
	if c.Train.MicroBatch > 0 && c.Train.GlobalBatch > 0 && c.Train.GlobalBatch < c.Train.MicroBatch {
		v.add("train.global_batch", "must be >= train.micro_batch (%d), got %d", c.Train.MicroBatch, c.Train.GlobalBatch)
	}
	if c.Cluster.MinNodes > 0 && c.Train.GlobalBatch > 0 && c.Train.GlobalBatch < c.Cluster.MinNodes {
		v.add("train.global_batch", "must be >= cluster.min_nodes (%d) so every rank gets a sample, got %d", c.Cluster.MinNodes, c.Train.GlobalBatch)
	}
	v.oneOf("train.optimizer", c.Train.Optimizer, OptimizerAdamW, OptimizerSGD)
	if !(c.Train.LR > 0) {
		v.add("train.lr", "must be > 0, got %g", c.Train.LR)
	}
	v.oneOf("train.schedule", c.Train.Schedule, ScheduleConstant, ScheduleLinear, ScheduleCosine)
	v.nonNegative("train.warmup_steps", c.Train.WarmupSteps)
	if c.Train.WarmupRatio < 0 || c.Train.WarmupRatio >= 1 {
		v.add("train.warmup_ratio", "must be in [0, 1), got %g", c.Train.WarmupRatio)
	}
	if c.Train.WarmupSteps > 0 && c.Train.WarmupRatio > 0 {
		v.add("train.warmup_ratio", "set either train.warmup_steps (%d) or train.warmup_ratio (%g), not both", c.Train.WarmupSteps, c.Train.WarmupRatio)
	}
	if c.Train.WeightDecay < 0 {
		v.add("train.weight_decay", "must be >= 0, got %g", c.Train.WeightDecay)
	}
	if len(c.Train.Betas) != 2 {
		v.add("train.betas", "must have 2 values, got %d", len(c.Train.Betas))
	} else {
		for i, b := range c.Train.Betas {
			if b < 0 || b >= 1 {
				v.add(fmt.Sprintf("train.betas[%d]", i), "must be in [0, 1), got %g", b)
			}
		}
	}
	if !(c.Train.Eps > 0) {
		v.add("train.eps", "must be > 0, got %g", c.Train.Eps)
	}
	if c.Train.Momentum < 0 || c.Train.Momentum >= 1 {
		v.add("train.momentum", "must be in [0, 1), got %g", c.Train.Momentum)
	}
	if c.Train.MaxGradNorm < 0 {
		v.add("train.max_grad_norm", "must be >= 0 (0 disables clipping), got %g", c.Train.MaxGradNorm)
	}
	v.oneOf("train.shard_optimizer", c.Train.ShardOptimizer, ShardNone, ShardZero1)
	if c.Train.ShardOptimizer == ShardZero1 && c.Train.Optimizer != OptimizerAdamW {
		v.add("train.shard_optimizer", "zero1 shards AdamW's moments; train.optimizer is %q: use adamw or shard_optimizer: none", c.Train.Optimizer)
	}
	v.oneOf("train.precision", c.Train.Precision, PrecisionFP32, PrecisionBF16)
	v.nonNegative("train.threads", c.Train.Threads)
	v.nonNegative("train.eval_every", c.Train.EvalEvery)
	v.nonNegative("train.digest_every", c.Train.DigestEvery)

	// allreduce
	if c.AllReduce.ChunkBytes < 4096 || c.AllReduce.ChunkBytes%4 != 0 {
		v.add("allreduce.chunk_bytes", "must be >= 4096 and a multiple of 4, got %d", c.AllReduce.ChunkBytes)
	}
	v.oneOf("allreduce.wire", c.AllReduce.Wire, PrecisionFP32, PrecisionBF16)
	v.oneOf("allreduce.transport", c.AllReduce.Transport, "default", "tcp", "grpc", "shm")
	if c.AllReduce.Timeout <= 0 {
		v.add("allreduce.timeout", "must be > 0, got %s", c.AllReduce.Timeout)
	} else if c.AllReduce.Timeout < time.Millisecond {
		// Nodes receive it in whole milliseconds; 0 would mean their default.
		v.add("allreduce.timeout", "must be >= 1ms, got %s", c.AllReduce.Timeout)
	}

	if b := c.AllReduce.BucketBytes; b != 0 && (b < 64<<10 || b%4 != 0) {
		v.add("allreduce.bucket_bytes", "must be 0 (one all-reduce of the whole gradient) or >= 65536 and a multiple of 4, got %d", b)
	}

	// checkpoint, metrics, output
	if c.Checkpoint.Every > 0 || c.Checkpoint.Keep > 0 {
		v.required("checkpoint.dir", c.Checkpoint.Dir)
	}
	v.nonNegative("checkpoint.every", c.Checkpoint.Every)
	v.nonNegative("checkpoint.keep", c.Checkpoint.Keep)
	v.hostPort("metrics.address", c.Metrics.Address, false)
	v.hostPort("metrics.dashboard", c.Metrics.Dashboard, false)
	v.required("output.dir", c.Output.Dir)
	if c.Checkpoint.Dir != "" && c.Output.Dir != "" {
		// The export replaces output.dir as a whole, checkpoints included.
		if rel, err := filepath.Rel(filepath.Clean(c.Output.Dir), filepath.Clean(c.Checkpoint.Dir)); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			v.add("checkpoint.dir", "must not be output.dir (%s) or inside it: the final export replaces that directory", c.Output.Dir)
		}
	}

	return errors.Join(v.errs...)
}

type validator struct{ errs []error }

func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

func (v *validator) required(key, val string) {
	if strings.TrimSpace(val) == "" {
		v.add(key, "must be set")
	}
}

func (v *validator) positive(key string, n int) {
	if n <= 0 {
		v.add(key, "must be > 0, got %d", n)
	}
}

func (v *validator) nonNegative(key string, n int) {
	if n < 0 {
		v.add(key, "must be >= 0, got %d", n)
	}
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		v.add(key, "must be one of %s, got %q", strings.Join(allowed, ", "), val)
	}
}

func (v *validator) hostPort(key, val string, required bool) {
	if val == "" {
		if required {
			v.add(key, "must be set (host:port)")
		}
		return
	}
	if _, _, err := net.SplitHostPort(val); err != nil {
		v.add(key, "must be host:port, got %q (%v)", val, err)
	}
}
