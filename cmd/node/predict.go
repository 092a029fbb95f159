package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/model/hf"
)

func predictCmd() *cobra.Command {
	var mf modelFlags
	var input, output string
	c := &cobra.Command{
		Use:   "predict --model DIR --input IN.jsonl [--output OUT.jsonl]",
		Short: "Run a model over JSON lines (text / text_pair, or input_ids) and write logits per line",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			m, tok, err := mf.open()
			if err != nil {
				return err
			}
			defer m.Close()
			in, err := os.Open(input)
			if err != nil {
				return fmt.Errorf("predict: %w", err)
			}
			defer in.Close()
			out := cmd.OutOrStdout()
			if output != "" {
				f, err := os.Create(output)
				if err != nil {
					return fmt.Errorf("predict: %w", err)
				}
				defer func() { err = errors.Join(err, f.Close()) }()
				out = f
			}
			return hf.PredictJSONL(m, tok, in, input, out, mf.batch, mf.maxLen)
		},
	}
	mf.register(c)
	c.Flags().StringVar(&input, "input", "", "input JSON lines")
	c.Flags().StringVar(&output, "output", "", "output JSON lines (default stdout)")
	c.MarkFlagRequired("input")
	return c
}
