package data

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var cls = Fields{Text: "text", Label: "label", Task: Classification, Labels: []string{"neg", "pos"}}

func TestReadFormats(t *testing.T) {
	jsonl := write(t, "d.jsonl", `{"text":"good","label":1}
{"text":"bad","label":"neg"}

{"text":"fine","label":"1"}
`)
	csvf := write(t, "d.csv", "label,text\npos,\"a, quoted \"\"text\"\"\"\n0,plain\n")
	tsvf := write(t, "d.tsv", "text\tlabel\nit's \"ok\"\t1\n")
	for _, tc := range []struct {
		path  string
		texts []string
		ids   []int
		lines []int
	}{
		{jsonl, []string{"good", "bad", "fine"}, []int{1, 0, 1}, []int{1, 2, 4}},
		{csvf, []string{`a, quoted "text"`, "plain"}, []int{1, 0}, []int{2, 3}},
		{tsvf, []string{`it's "ok"`}, []int{1}, []int{2}},
	} {
		exs, err := ReadFile(tc.path, "", cls)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		if len(exs) != len(tc.texts) {
			t.Fatalf("%s: %d examples, want %d", tc.path, len(exs), len(tc.texts))
		}
		for i, ex := range exs {
			if ex.Text != tc.texts[i] || ex.Label != tc.ids[i] || ex.Line != tc.lines[i] {
				t.Errorf("%s[%d] = %+v, want text %q label %d line %d", tc.path, i, ex, tc.texts[i], tc.ids[i], tc.lines[i])
			}
		}
	}
}

func TestReadPairsAndRegression(t *testing.T) {
	p := write(t, "sts.jsonl", `{"a":"one","b":"two","score":3.5}`+"\n")
	exs, err := ReadFile(p, "jsonl", Fields{Text: "a", TextPair: "b", Label: "score", Task: Regression})
	if err != nil {
		t.Fatal(err)
	}
	if exs[0].TextPair != "two" || exs[0].Target != 3.5 {
		t.Fatalf("got %+v", exs[0])
	}
	exs, err = ReadFile(p, "jsonl", Fields{Text: "a", Task: CausalLM})
	if err != nil || exs[0].Text != "one" {
		t.Fatalf("causal LM needs no label: %v %+v", err, exs)
	}
}

func TestReadErrorsNameFileLineField(t *testing.T) {
	cases := []struct {
		name, body string
		f          Fields
		want       string
	}{
		{"nolabel.jsonl", `{"text":"a","label":0}` + "\n" + `{"text":"b"}`, cls, `:2: field "label": missing label`},
		{"range.jsonl", `{"text":"a","label":2}`, cls, `:1: field "label": label 2 out of range [0, 2)`},
		{"negative.jsonl", `{"text":"a","label":-1}`, cls, `:1: field "label": label -1 out of range [0, 2)`},
		{"unknown.jsonl", `{"text":"a","label":"meh"}`, cls, `:1: field "label": unknown label "meh": want one of neg, pos or an id`},
		{"frac.jsonl", `{"text":"a","label":0.5}`, cls, `:1: field "label": label 0.5 is not an integer class id`},
		{"empty.jsonl", `{"text":"  ","label":0}`, cls, `:1: field "text": empty text`},
		{"notext.jsonl", `{"label":0}`, cls, `:1: field "text": missing text`},
		{"numtext.jsonl", `{"text":5,"label":0}`, cls, `:1: field "text": text must be a string`},
		{"badjson.jsonl", `{"text":"a","label":0}` + "\n\n" + `{"text": "a",`, cls, `:3: bad JSON`},
		{"two.jsonl", `{"text":"a","label":0} {}`, cls, `:1: bad JSON: more than one value`},
		{"regr.jsonl", `{"text":"a","label":"high"}`, Fields{Text: "text", Label: "label", Task: Regression}, `:1: field "label": regression label high is not a finite number`},
		{"nopair.jsonl", `{"text":"a","label":0}`, Fields{Text: "text", TextPair: "b", Label: "label", NumLabels: 2}, `:1: field "b": missing text`},
		{"nonames.jsonl", `{"text":"a","label":"pos"}`, Fields{Text: "text", Label: "label", NumLabels: 2}, `label "pos" is not an integer class id and model.labels is empty`},
		{"header.csv", "text,y\na,1\n", cls, `:1: header has no field "label"`},
		{"csvlabel.csv", "text,label\na,1\nb,\n", cls, `:3: field "label": missing label`},
		{"quote.csv", "text,label\n\"unclosed,1\n", cls, `quote.csv:2:`},
		{"blank.csv", "", cls, "empty file"},
		{"rows.jsonl", "\n\n", cls, "no examples"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, tc.name, tc.body)
			_, err := ReadFile(p, "", tc.f)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q\nwant it to name %s and contain %q", err, p, tc.want)
			}
		})
	}
	if _, err := ReadFile(write(t, "d.parquet", "x"), "", cls); err == nil || !strings.Contains(err.Error(), "cannot infer the format") {
		t.Errorf("unknown extension: %v", err)
	}
}

func TestReadSentimentDemo(t *testing.T) {
	d := dataDir(t)
	f := Fields{Text: "text", Label: "label", Labels: SentimentLabels}
	train, err := ReadFile(filepath.Join(d, "sentiment", "train.jsonl"), "", f)
	if err != nil {
		t.Fatal(err)
	}
	eval, err := ReadFile(filepath.Join(d, "sentiment", "eval.jsonl"), "", f)
	if err != nil {
		t.Fatal(err)
	}
	if len(train)+len(eval) != 3000 || len(eval) < 250 || len(eval) > 350 {
		t.Fatalf("split %d/%d: want 3000 sentences, about 10%% eval", len(train), len(eval))
	}
	seen := map[string]bool{}
	pos := 0
	for _, ex := range train {
		seen[ex.Text] = true
		pos += ex.Label
		if IsEvalText(ex.Text) {
			t.Fatalf("train line %d belongs to eval by IsEvalText", ex.Line)
		}
	}
	for _, ex := range eval {
		if seen[ex.Text] {
			t.Fatalf("eval line %d %q also in train", ex.Line, ex.Text)
		}
	}
	if pos < len(train)*4/10 || pos > len(train)*6/10 {
		t.Errorf("%d of %d train labels positive: fixtures are balanced", pos, len(train))
	}
}
