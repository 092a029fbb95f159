package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// valid returns a configuration that passes Validate, to be broken one field
// at a time.
func valid() *Config {
	c := Default()
	c.Model.Path = "/models/bert"
	c.Model.NumLabels = 2
	c.Data.TrainFile = "/data/train.jsonl"
	c.Data.Format = FormatJSONL
	return c
}

func TestValidConfigPasses(t *testing.T) {
	if err := valid().Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
}

func TestValidateNamesEveryBadKey(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"bind", func(c *Config) { c.Cluster.Bind = "nonsense" }, "cluster.bind: must be host:port"},
		{"bind empty", func(c *Config) { c.Cluster.Bind = "" }, "cluster.bind: must be set"},
		{"advertise", func(c *Config) { c.Cluster.Advertise = "host" }, "cluster.advertise: must be host:port"},
		{"grpc", func(c *Config) { c.Cluster.GRPC = "" }, "cluster.grpc: must be set"},
		{"min_nodes", func(c *Config) { c.Cluster.MinNodes = 0 }, "cluster.min_nodes: must be > 0, got 0"},
		{"max_nodes", func(c *Config) { c.Cluster.MaxNodes = -1 }, "cluster.max_nodes: must be > 0, got -1"},
		{"min > max", func(c *Config) { c.Cluster.MinNodes, c.Cluster.MaxNodes = 4, 2 }, "cluster.max_nodes: must be >= cluster.min_nodes (4), got 2"},
		{"settle", func(c *Config) { c.Cluster.Settle = -time.Second }, "cluster.settle: must be >= 0"},
		{"label", func(c *Config) { c.Cluster.Label = "" }, "cluster.label: must not be empty"},
		{"checkpoint in output", func(c *Config) { c.Output.Dir, c.Checkpoint.Dir = "/runs/a/model", "/runs/a/model/ckpt" }, "checkpoint.dir: must not be output.dir (/runs/a/model) or inside it"},
		{"checkpoint is output", func(c *Config) { c.Output.Dir, c.Checkpoint.Dir = "/runs/a", "/runs/a/" }, "checkpoint.dir: must not be output.dir (/runs/a) or inside it"},
		{"model path", func(c *Config) { c.Model.Path = "" }, "model.path: must be set"},
		{"task", func(c *Config) { c.Model.Task = "ner" }, `model.task: must be one of classification, regression, causal_lm, masked_lm, token_classification, got "ner"`},
		{"mlm probability", func(c *Config) { c.Model.Task = TaskMaskedLM; c.Model.Labels = nil; c.Data.MLMProbability = 1 }, `data.mlm_probability: must be in (0, 1) for task masked_lm, got 1`},
		{"token labels", func(c *Config) { c.Model.Task = TaskTokenClassification; c.Model.NumLabels = 1; c.Model.Labels = nil }, `model.num_labels: must be >= 2 for task token_classification, got 1`},
		{"init", func(c *Config) { c.Model.Init = "zeros" }, `model.init: must be one of pretrained, random, got "zeros"`},
		{"classification labels", func(c *Config) { c.Model.NumLabels = 1 }, "model.num_labels: must be >= 2 for task classification, got 1"},
		{"regression labels", func(c *Config) { c.Model.Task = TaskRegression }, "model.num_labels: must be 1 for task regression, got 2"},
		{"regression names", func(c *Config) {
			c.Model.Task, c.Model.NumLabels, c.Model.Labels = TaskRegression, 1, []string{"a"}
		}, "model.labels: must be empty for task regression"},
		{"causal names", func(c *Config) { c.Model.Task, c.Model.Labels = TaskCausalLM, []string{"a"} }, "model.labels: must be empty for task causal_lm"},
		{"label count", func(c *Config) { c.Model.Labels = []string{"a", "b", "c"} }, "model.labels: has 3 names but model.num_labels is 2"},
		{"label empty", func(c *Config) { c.Model.Labels = []string{"a", ""} }, "model.labels[1]: must not be empty"},
		{"label dup", func(c *Config) { c.Model.Labels = []string{"a", "a"} }, `model.labels[1]: duplicates model.labels[0] ("a")`},
		{"train file", func(c *Config) { c.Data.TrainFile = "" }, "data.train_file: must be set"},
		{"format", func(c *Config) { c.Data.Format = "parquet" }, `data.format: must be one of jsonl, csv, tsv, tokens_jsonl, got "parquet"`},
		{"tokens for classification", func(c *Config) { c.Data.Format = FormatTokens }, `data.format: tokens_jsonl is pre-tokenized causal-LM data: it needs model.task causal_lm, got "classification"`},
		{"pack for classification", func(c *Config) { c.Data.Pack = true }, `data.pack: packing is for model.task causal_lm only, got "classification"`},
		{"format uninferable", func(c *Config) { c.Data.Format = "" }, "data.format: cannot be inferred"},
		{"text field", func(c *Config) { c.Data.TextField = "" }, "data.text_field: must be set"},
		{"label field", func(c *Config) { c.Data.LabelField = "" }, "data.label_field: must be set"},
		{"pair field", func(c *Config) { c.Data.TextPairField = "text" }, `data.text_pair_field: must differ from data.text_field ("text")`},
		{"max length", func(c *Config) { c.Data.MaxLength = 2 }, "data.max_length: must be >= 8"},
		{"epochs", func(c *Config) { c.Train.Epochs = 0 }, "train.epochs: must be > 0, got 0"},
		{"max steps", func(c *Config) { c.Train.MaxSteps = -1 }, "train.max_steps: must be >= 0, got -1"},
		{"global batch", func(c *Config) { c.Train.GlobalBatch = 0 }, "train.global_batch: must be > 0, got 0"},
		{"micro batch", func(c *Config) { c.Train.MicroBatch = 0 }, "train.micro_batch: must be > 0, got 0"},
		{"global < micro", func(c *Config) { c.Train.GlobalBatch, c.Train.MicroBatch = 4, 8 }, "train.global_batch: must be >= train.micro_batch (8), got 4"},
		{"global < nodes", func(c *Config) {
			c.Train.GlobalBatch, c.Train.MicroBatch, c.Cluster.MinNodes = 2, 1, 3
		}, "train.global_batch: must be >= cluster.min_nodes (3)"},
		{"optimizer", func(c *Config) { c.Train.Optimizer = "lion" }, `train.optimizer: must be one of adamw, sgd, got "lion"`},
		{"lr", func(c *Config) { c.Train.LR = 0 }, "train.lr: must be > 0, got 0"},
		{"schedule", func(c *Config) { c.Train.Schedule = "step" }, `train.schedule: must be one of constant, linear, cosine, got "step"`},
		{"warmup steps", func(c *Config) { c.Train.WarmupSteps = -5 }, "train.warmup_steps: must be >= 0, got -5"},
		{"warmup ratio", func(c *Config) { c.Train.WarmupRatio = 1.5 }, "train.warmup_ratio: must be in [0, 1), got 1.5"},
		{"warmup both", func(c *Config) { c.Train.WarmupSteps, c.Train.WarmupRatio = 10, 0.1 }, "train.warmup_ratio: set either train.warmup_steps (10) or train.warmup_ratio (0.1), not both"},
		{"weight decay", func(c *Config) { c.Train.WeightDecay = -0.1 }, "train.weight_decay: must be >= 0"},
		{"betas count", func(c *Config) { c.Train.Betas = []float64{0.9} }, "train.betas: must have 2 values, got 1"},
		{"beta range", func(c *Config) { c.Train.Betas = []float64{0.9, 1} }, "train.betas[1]: must be in [0, 1), got 1"},
		{"eps", func(c *Config) { c.Train.Eps = 0 }, "train.eps: must be > 0"},
		{"momentum", func(c *Config) { c.Train.Momentum = 1 }, "train.momentum: must be in [0, 1), got 1"},
		{"grad norm", func(c *Config) { c.Train.MaxGradNorm = -1 }, "train.max_grad_norm: must be >= 0 (0 disables clipping), got -1"},
		{"shard optimizer", func(c *Config) { c.Train.ShardOptimizer = "zero3" }, `train.shard_optimizer: must be one of none, zero1, got "zero3"`},
		{"zero1 with sgd", func(c *Config) { c.Train.ShardOptimizer, c.Train.Optimizer = ShardZero1, OptimizerSGD }, `train.shard_optimizer: zero1 shards AdamW's moments; train.optimizer is "sgd": use adamw or shard_optimizer: none`},
		{"precision", func(c *Config) { c.Train.Precision = "fp16" }, `train.precision: must be one of fp32, bf16, got "fp16"`},
		{"threads", func(c *Config) { c.Train.Threads = -1 }, "train.threads: must be >= 0"},
		{"eval every", func(c *Config) { c.Train.EvalEvery = -1 }, "train.eval_every: must be >= 0"},
		{"digest every", func(c *Config) { c.Train.DigestEvery = -1 }, "train.digest_every: must be >= 0"},
		{"chunk", func(c *Config) { c.AllReduce.ChunkBytes = 1000 }, "allreduce.chunk_bytes: must be >= 4096 and a multiple of 4, got 1000"},
		{"wire", func(c *Config) { c.AllReduce.Wire = "int8" }, `allreduce.wire: must be one of fp32, bf16, got "int8"`},
		{"transport", func(c *Config) { c.AllReduce.Transport = "udp" }, `allreduce.transport: must be one of default, tcp, grpc, shm, got "udp"`},
		{"timeout", func(c *Config) { c.AllReduce.Timeout = 0 }, "allreduce.timeout: must be > 0"},
		{"bucket", func(c *Config) { c.AllReduce.BucketBytes = 1000 }, "allreduce.bucket_bytes: must be 0 (one all-reduce of the whole gradient) or >= 65536 and a multiple of 4, got 1000"},
		{"bucket negative", func(c *Config) { c.AllReduce.BucketBytes = -4 }, "allreduce.bucket_bytes: must be 0"},
		{"tls partial", func(c *Config) { c.Cluster.TLS.Cert = "a.pem" }, "cluster.tls.key: must be set when any of cluster.tls.cert"},
		{"tls files while disabled", func(c *Config) {
			c.Cluster.TLS = TLSConfig{Cert: "a", Key: "b", CA: "c"}
		}, "cluster.tls.enabled: is false but certificate files are given"},
		{"timeout below 1ms", func(c *Config) { c.AllReduce.Timeout = 500 * time.Microsecond }, "allreduce.timeout: must be >= 1ms, got 500µs"},
		{"checkpoint dir", func(c *Config) { c.Checkpoint.Dir = "" }, "checkpoint.dir: must be set"},
		{"checkpoint every", func(c *Config) { c.Checkpoint.Every = -1 }, "checkpoint.every: must be >= 0"},
		{"checkpoint keep", func(c *Config) { c.Checkpoint.Keep = -1 }, "checkpoint.keep: must be >= 0"},
		{"metrics", func(c *Config) { c.Metrics.Address = "9090" }, "metrics.address: must be host:port"},
		{"dashboard", func(c *Config) { c.Metrics.Dashboard = "x" }, "metrics.dashboard: must be host:port"},
		{"output", func(c *Config) { c.Output.Dir = "" }, "output.dir: must be set"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate accepted the config; want error %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q\ndoes not contain %q", err, tc.want)
			}
		})
	}
}

func TestTokensFormatNeedsNoTextField(t *testing.T) {
	c := valid()
	c.Model.Task, c.Model.NumLabels = TaskCausalLM, 0
	c.Data.Format, c.Data.TextField, c.Data.LabelField, c.Data.Pack = FormatTokens, "", "", true
	if err := c.Validate(); err != nil {
		t.Fatalf("packed tokens_jsonl causal-LM config rejected: %v", err)
	}
}

func TestValidateReportsAllErrors(t *testing.T) {
	c := valid()
	c.Train.MicroBatch = 0
	c.Train.LR = -1
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "train.micro_batch") || !strings.Contains(err.Error(), "train.lr") {
		t.Fatalf("want both train.micro_batch and train.lr reported, got %v", err)
	}
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const minimal = `
model:
  path: model
  labels: [neg, pos]
data:
  train_file: data/train.jsonl
train:
  lr: 1.0e-4
`

func TestLoadMinimalResolvesAndDerives(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", minimal)
	c, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "model"); c.Model.Path != want {
		t.Errorf("model.path = %q, want %q (relative to the config file)", c.Model.Path, want)
	}
	if want := filepath.Join(dir, "data/train.jsonl"); c.Data.TrainFile != want {
		t.Errorf("data.train_file = %q, want %q", c.Data.TrainFile, want)
	}
	if c.Data.Tokenizer != c.Model.Path {
		t.Errorf("data.tokenizer = %q, want model.path %q", c.Data.Tokenizer, c.Model.Path)
	}
	if c.Data.Format != FormatJSONL || c.Model.NumLabels != 2 {
		t.Errorf("derived format %q num_labels %d, want jsonl 2", c.Data.Format, c.Model.NumLabels)
	}
	if c.Train.LR != 1e-4 || c.Train.MicroBatch != Default().Train.MicroBatch {
		t.Errorf("lr %g micro_batch %d: file value or default lost", c.Train.LR, c.Train.MicroBatch)
	}
	if !reflect.DeepEqual(c.Train.Betas, []float64{0.9, 0.999}) || c.AllReduce.Timeout != time.Minute {
		t.Errorf("defaults lost: betas %v timeout %s", c.Train.Betas, c.AllReduce.Timeout)
	}
}

func TestLoadRejectsUnknownKeys(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", minimal+"  micro_bach: 4\ntrian:\n  x: 1\n")
	_, err := Load(p, nil)
	if err == nil {
		t.Fatal("unknown keys accepted")
	}
	for _, want := range []string{
		p + `:9: unknown key "train.micro_bach" (did you mean "train.micro_batch"?)`,
		p + `:10: unknown key "trian" (did you mean "train"?)`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q\ndoes not contain %q", err, want)
		}
	}
}

func TestLoadMalformedYAMLNamesFileAndLine(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "bad.yaml", "model:\n  path: x\ndata:\n  train_file: [unclosed\n")
	_, err := Load(p, nil)
	if err == nil {
		t.Fatal("malformed YAML accepted")
	}
	if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "line ") {
		t.Fatalf("error %q names neither file %s nor a line", err, p)
	}
	p = writeFile(t, dir, "tab.yaml", "model:\n\tpath: x\n")
	if _, err := Load(p, nil); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("tab-indented YAML: want error at line 2, got %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), nil)
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("want error naming nope.yaml, got %v", err)
	}
}

func TestLoadInvalidValueNamesKey(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", minimal+"  micro_batch: 0\n")
	_, err := Load(p, nil)
	if err == nil || !strings.Contains(err.Error(), "train.micro_batch: must be > 0, got 0") {
		t.Fatalf("got %v", err)
	}
}

func TestEnvOverridesFile(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", minimal)
	t.Setenv("RINGTUNE_TRAIN_LR", "0.002")
	t.Setenv("RINGTUNE_TRAIN_BETAS", "0.8,0.95")
	t.Setenv("RINGTUNE_ALLREDUCE_TIMEOUT", "90s")
	t.Setenv("RINGTUNE_DATA_EVAL_FILE", "rel/eval.jsonl")
	c, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Train.LR != 0.002 {
		t.Errorf("train.lr = %g, want env 0.002", c.Train.LR)
	}
	if !reflect.DeepEqual(c.Train.Betas, []float64{0.8, 0.95}) {
		t.Errorf("train.betas = %v, want env [0.8 0.95]", c.Train.Betas)
	}
	if c.AllReduce.Timeout != 90*time.Second {
		t.Errorf("allreduce.timeout = %s, want 90s", c.AllReduce.Timeout)
	}
	if c.Data.EvalFile != "rel/eval.jsonl" {
		t.Errorf("data.eval_file = %q: a path from the environment must stay relative to the working directory", c.Data.EvalFile)
	}
}

func TestUnknownEnvRejected(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", minimal)
	t.Setenv("RINGTUNE_TRAIN_MICROBATCH", "4")
	t.Setenv("RINGTUNE_UNRELATED_TOOL", "x") // outside every section: not ours to judge
	_, err := Load(p, nil)
	if err == nil || !strings.Contains(err.Error(), `RINGTUNE_TRAIN_MICROBATCH: no such config key (did you mean "RINGTUNE_TRAIN_MICRO_BATCH"?)`) {
		t.Fatalf("got %v", err)
	}
	if strings.Contains(err.Error(), "UNRELATED") {
		t.Fatalf("variable outside config sections rejected: %v", err)
	}
}

func TestFlagsOverrideEnvAndFile(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", minimal+"  micro_batch: 4\n")
	t.Setenv("RINGTUNE_TRAIN_LR", "0.002")
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse([]string{"--train.lr=0.003", "--cluster.min_nodes=3", "--train.betas=0.5,0.6", "--model.labels=a,b,c"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p, fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Train.LR != 0.003 || c.Cluster.MinNodes != 3 {
		t.Errorf("lr %g min_nodes %d, want flags 0.003 and 3", c.Train.LR, c.Cluster.MinNodes)
	}
	if c.Train.MicroBatch != 4 {
		t.Errorf("train.micro_batch = %d: an unset flag must not override the file's 4", c.Train.MicroBatch)
	}
	if !reflect.DeepEqual(c.Train.Betas, []float64{0.5, 0.6}) || !reflect.DeepEqual(c.Model.Labels, []string{"a", "b", "c"}) || c.Model.NumLabels != 3 {
		t.Errorf("betas %v labels %v num_labels %d from flags", c.Train.Betas, c.Model.Labels, c.Model.NumLabels)
	}
}

func TestExampleClusterYAMLLoads(t *testing.T) {
	p := filepath.Join("..", "examples", "cluster.yaml")
	c, err := Load(p, nil)
	if err != nil {
		t.Fatalf("examples/cluster.yaml: %v", err)
	}
	if c.Model.Init != InitRandom || c.Cluster.MinNodes != 2 || c.Model.NumLabels != 2 {
		t.Errorf("example not read as written: init %q min_nodes %d num_labels %d", c.Model.Init, c.Cluster.MinNodes, c.Model.NumLabels)
	}
	if want := filepath.Join("..", ".data", "sentiment", "train.jsonl"); c.Data.TrainFile != want {
		t.Errorf("data.train_file = %q, want %q", c.Data.TrainFile, want)
	}
}

func TestEveryKeyHasAFlagAndEnvName(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	RegisterFlags(fs)
	keys := keyPaths(reflect.TypeOf(Config{}), "")
	if len(keys) < 50 {
		t.Fatalf("only %d keys found; reflection walk lost sections", len(keys))
	}
	for _, k := range keys {
		if fs.Lookup(k.path) == nil {
			t.Errorf("no flag for key %s (unsupported field type?)", k.path)
		}
	}
}

// TestDurationNeedsUnit: a bare number for a duration is an error naming the
// key and its line, not 5ns (settle) or a timeout truncated to 0ms.
func TestDurationNeedsUnit(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ yaml, want string }{
		{"cluster:\n  settle: 5\n" + minimal, `:2: cluster.settle: want a duration with a unit (like 5s, 500ms or 2m), got 5`},
		{minimal + "allreduce:\n  timeout: 60\n", `:10: allreduce.timeout: want a duration with a unit (like 5s, 500ms or 2m), got 60`},
		{minimal + "allreduce:\n  timeout: 1.5\n", `:10: allreduce.timeout: want a duration with a unit`},
		{minimal + "allreduce:\n  timeout: 60 s\n", `:10: allreduce.timeout: want a duration with a unit (like 5s, 500ms or 2m), got "60 s"`},
	} {
		p := writeFile(t, dir, "c.yaml", tc.yaml)
		_, err := Load(p, nil)
		if err == nil || !strings.Contains(err.Error(), p+tc.want) {
			t.Errorf("%q: got %v, want %q", tc.yaml, err, p+tc.want)
		}
	}
	p := writeFile(t, dir, "c.yaml", "cluster:\n  settle: 0\n"+minimal+"allreduce:\n  timeout: 1m30s\n")
	c, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster.Settle != 0 || c.AllReduce.Timeout != 90*time.Second {
		t.Errorf("settle %s timeout %s, want 0 and 1m30s", c.Cluster.Settle, c.AllReduce.Timeout)
	}
	t.Setenv("RINGTUNE_CLUSTER_SETTLE", "5")
	if _, err := Load(p, nil); err == nil || !strings.Contains(err.Error(), "environment variable RINGTUNE_CLUSTER_SETTLE (cluster.settle): want a duration with a unit (like 5s, 500ms or 2m), got \"5\"") {
		t.Errorf("RINGTUNE_CLUSTER_SETTLE=5: got %v, want an error naming the variable and the missing unit", err)
	}
	t.Setenv("RINGTUNE_CLUSTER_SETTLE", "0")
	t.Setenv("RINGTUNE_TRAIN_EPOCHS", "three")
	t.Setenv("RINGTUNE_TRAIN_BETAS", "0.9,x")
	t.Setenv("RINGTUNE_TRAIN_DROP_LAST", "maybe")
	_, err = Load(p, nil)
	for _, want := range []string{
		`environment variable RINGTUNE_TRAIN_EPOCHS (train.epochs): want an integer, got "three"`,
		`environment variable RINGTUNE_TRAIN_BETAS (train.betas): want a list of numbers, got "0.9,x"`,
		`environment variable RINGTUNE_TRAIN_DROP_LAST (train.drop_last): want true or false, got "maybe"`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want %q", err, want)
		}
	}
}

// TestWrongTypeNamesLine: every value of the wrong type is reported with
// its file, line and key, all at once.
func TestWrongTypeNamesLine(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", "cluster:\n  min_nodes: two\n  label: [a, b]\n"+minimal+
		"  drop_last: maybe\n  betas: 0.9\n  seed: 1.5\n  epochs: {a: 1}\ncheckpoint:\n  every: yes\noutput:\n  dir: [a]\ndata:\n  max_length: \"64\"\n")
	_, err := Load(p, nil)
	if err == nil {
		t.Fatal("wrong types accepted")
	}
	for _, want := range []string{
		p + `:2: cluster.min_nodes: want an integer, got "two"`,
		p + `:3: cluster.label: want a string, got a list`,
		p + `:12: train.drop_last: want true or false, got "maybe"`,
		p + `:13: train.betas: want a list of numbers, got 0.9`,
		p + `:14: train.seed: want an integer, got 1.5`,
		p + `:15: train.epochs: want an integer, got a mapping`,
		p + `:17: checkpoint.every: want an integer, got "yes"`,
		p + `:19: output.dir: want a string, got a list`,
		p + `:21: data.max_length: want an integer, got "64"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q\ndoes not contain %q", err, want)
		}
	}
}

// TestLoadTLSSection: cluster.tls is a sub-section: its keys load from the
// file (paths relative to it), unknown keys in it are named with their
// line, and cluster.tls.enabled can be turned off by a flag.
func TestLoadTLSSection(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", "cluster:\n  tls:\n    cert: certs/node.pem\n    key: certs/node-key.pem\n    ca: certs/ca.pem\n"+minimal)
	c, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "certs/node.pem"); c.Cluster.TLS.Cert != want || !c.Cluster.TLS.Enabled || c.Cluster.TLS.CA != filepath.Join(dir, "certs/ca.pem") {
		t.Errorf("cluster.tls = %+v, want enabled with paths relative to the file (%s)", c.Cluster.TLS, want)
	}
	p = writeFile(t, dir, "bad.yaml", "cluster:\n  tls:\n    enable: false\n"+minimal)
	if _, err := Load(p, nil); err == nil || !strings.Contains(err.Error(), p+`:3: unknown key "cluster.tls.enable" (did you mean "cluster.tls.enabled"?)`) {
		t.Errorf("unknown sub-key: got %v", err)
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse([]string{"--cluster.tls.enabled=false"}); err != nil {
		t.Fatal(err)
	}
	p = writeFile(t, dir, "plain.yaml", minimal)
	if c, err = Load(p, fs); err != nil || c.Cluster.TLS.Enabled {
		t.Errorf("--cluster.tls.enabled=false: enabled=%v err=%v", c != nil && c.Cluster.TLS.Enabled, err)
	}
}
