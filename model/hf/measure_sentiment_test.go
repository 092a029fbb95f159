package hf_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/config"
)

// BenchmarkSentimentFineTune drives the rows of the README's table "Why the
// checkpoint loses on sentiment": it fine-tunes the demo's sentiment budget
// (demoSentiment, with RINGTUNE_SENTIMENT_LR, _MAX_LEN, _WARMUP, _EPOCHS
// replacing its fields) from each directory of RINGTUNE_SENTIMENT_FROM
// (comma-separated; random:DIR starts from DIR's config with random
// weights) and reports held-out and training-set accuracy as metrics
// (eval-acc-K, fit-acc-K for the K-th directory). It is a measurement, not
// a check: its assertions are TestPretrainedSentimentLossIsAttention's.
// One op is the whole measurement: use -benchtime 1x. Opt-in: set
// RINGTUNE_SENTIMENT_FROM. E.g., for the row with query and key re-drawn:
//
//	scripts/ckpt-redraw.py DIR /tmp/qk --redraw .attention.self.query --redraw .attention.self.key
//	RINGTUNE_SENTIMENT_FROM=/tmp/qk go test -count=1 -timeout 0 -run '^$' -bench BenchmarkSentimentFineTune -benchtime 1x -v ./model/hf
func BenchmarkSentimentFineTune(t *testing.B) {
	from := os.Getenv("RINGTUNE_SENTIMENT_FROM")
	if from == "" {
		t.Skip("set RINGTUNE_SENTIMENT_FROM=DIR[,random:DIR...] to measure sentiment fine-tuning")
	}
	b := demoSentiment
	num := func(name string, dst *float64) {
		if v := os.Getenv(name); v != "" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s=%q: want a number", name, v)
			}
			*dst = f
		}
	}
	maxLen, epochs := float64(b.MaxLen), float64(b.Epochs)
	num("RINGTUNE_SENTIMENT_LR", &b.LR)
	num("RINGTUNE_SENTIMENT_WARMUP", &b.WarmupRatio)
	num("RINGTUNE_SENTIMENT_MAX_LEN", &maxLen)
	num("RINGTUNE_SENTIMENT_EPOCHS", &epochs)
	b.MaxLen, b.Epochs = int(maxLen), int(epochs)
	for k, d := range strings.Split(from, ",") {
		init := config.InitPretrained
		if r, ok := strings.CutPrefix(d, "random:"); ok {
			init, d = config.InitRandom, r
		}
		ev, fit := finetuneSentiment(t, d, init, b)
		t.Logf("measured: sentiment from %s (%s), lr %g, warm-up %g, %d tokens, %d epochs: held-out accuracy %.3f, training set %.3f",
			d, init, b.LR, b.WarmupRatio, b.MaxLen, b.Epochs, ev.Accuracy, fit.Accuracy)
		t.ReportMetric(ev.Accuracy, fmt.Sprintf("eval-acc-%d", k))
		t.ReportMetric(fit.Accuracy, fmt.Sprintf("fit-acc-%d", k))
	}
}
