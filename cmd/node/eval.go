package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
)

func evalCmd() *cobra.Command {
	var mf modelFlags
	var file string
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
			if err := needTokenizer(tok, mf.dir); err != nil {
				return err
			}
			mt, err := hf.EvaluateFile(m, tok, file, fields, mf.batch, mf.maxLen)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), mt)
			return nil
		},
	}
	mf.register(c)
	c.Flags().StringVar(&file, "data", "", "dataset file (jsonl, csv, tsv)")
	c.Flags().StringVar(&fields.Text, "text-field", "text", "field holding the text")
	c.Flags().StringVar(&fields.TextPair, "text-pair-field", "", "field holding the second text of a pair")
	c.Flags().StringVar(&fields.Label, "label-field", "label", "field holding the label")
	c.MarkFlagRequired("data")
	return c
}
