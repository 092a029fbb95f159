package hf

import "github.com/ringtune/ringtune/model/hfspec"

// The config.json parsing and the parameter layout live in the pure package
// hfspec, so that the coordinator, which must not link libtorch, validates a
// model directory with the same code the nodes load it with. These aliases
// keep this package's API.

// Family is an architecture family this package implements.
type Family = hfspec.Family

// The families.
const (
	BERT  = hfspec.BERT
	GPT2  = hfspec.GPT2
	Llama = hfspec.Llama
)

// Config is hfspec.Config: the architecture-deciding part of config.json.
type Config = hfspec.Config

// ReadConfig reads dir/config.json.
func ReadConfig(dir string) (*Config, error) { return hfspec.ReadConfig(dir) }

// ParseConfig parses the bytes of a config.json; path names it in errors.
func ParseConfig(raw []byte, path string) (*Config, error) { return hfspec.ParseConfig(raw, path) }
