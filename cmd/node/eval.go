package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
)

func evalCmd() *cobra.Command {
	var mf modelFlags
	var file, format string
	var fields data.Fields
	c := &cobra.Command{
		Use:   "eval --model DIR --data FILE",
		Short: "Evaluate a model on a dataset and print the task's metrics",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, tok, err := mf.open()
			if err != nil {
				return err
			}
			defer m.Close()
			var mt hf.Metrics
			switch format {
			case data.FormatTokens:
				mt, err = hf.EvaluateTokensFile(m, file, mf.batch, mf.maxLen)
			case "":
				if err := needTokenizer(tok, mf.dir); err != nil {
					return err
				}
				mt, err = hf.EvaluateFile(m, tok, file, fields, mf.batch, mf.maxLen)
			default:
				return fmt.Errorf("--format %q: want tokens_jsonl, or none to read text by the file's extension", format)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), mt)
			return nil
		},
	}
	mf.register(c)
	c.Flags().StringVar(&file, "data", "", "dataset file (jsonl, csv, tsv; or pre-tokenized rows with --format tokens_jsonl)")
	c.Flags().StringVar(&format, "format", "", "tokens_jsonl for pre-tokenized causal-LM rows (input_ids, optional -100 labels); default: text, by extension")
	c.Flags().StringVar(&fields.Text, "text-field", "text", "field holding the text")
	c.Flags().StringVar(&fields.TextPair, "text-pair-field", "", "field holding the second text of a pair")
	c.Flags().StringVar(&fields.Label, "label-field", "label", "field holding the label")
	c.MarkFlagRequired("data")
	return c
}
