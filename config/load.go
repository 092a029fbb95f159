package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix starts every environment variable Load reads: train.lr is
// RINGTUNE_TRAIN_LR. Lists are comma-separated (RINGTUNE_TRAIN_BETAS=0.9,0.98).
const EnvPrefix = "RINGTUNE"

// Load builds the configuration from, in increasing precedence: Default(), the
// YAML file at path (skipped when path is empty), RINGTUNE_* environment
// variables, and the flags in flags that were set on the command line (flags
// may be nil). A flag takes part when its name is a key path such as
// "train.lr"; RegisterFlags defines one for every key.
//
// Relative paths given in the file are resolved against the file's directory,
// those given by environment or flags against the working directory. Derived
// values are filled in (data.format from the train file's extension,
// data.tokenizer from model.path, model.num_labels from the task), and the
// result is validated.
func Load(path string, flags *pflag.FlagSet) (*Config, error) {
	keys := keyPaths(reflect.TypeOf(Config{}), "")
	v := viper.New()
	def := Default()
	for _, k := range keys {
		v.SetDefault(k.path, fieldByPath(def, k.path).Interface())
	}

	fromFile := map[string]bool{}
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		m, err := parseYAML(path, raw, keys)
		if err != nil {
			return nil, err
		}
		if err := v.MergeConfigMap(m); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		for _, k := range keys {
			if v.InConfig(k.path) {
				fromFile[k.path] = true
			}
		}
	}

	if err := checkEnv(keys); err != nil {
		return nil, err
	}
	if err := checkEnvTypes(keys); err != nil {
		return nil, err
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()

	if flags != nil {
		for _, k := range keys {
			if f := flags.Lookup(k.path); f != nil {
				if err := v.BindPFlag(k.path, f); err != nil {
					return nil, fmt.Errorf("bind flag --%s: %w", k.path, err)
				}
			}
		}
	}

	cfg := &Config{}
	hook := mapstructure.ComposeDecodeHookFunc(
		mapstructure.StringToTimeDurationHookFunc(),
		splitList,
	)
	if err := v.Unmarshal(cfg, viper.DecodeHook(hook)); err != nil {
		return nil, fmt.Errorf("config %s: %w", displayPath(path), err)
	}

	// A path in the file is relative to the file, so a config can sit next
	// to its data and be run from anywhere; one typed on a command line or
	// in the environment means what the shell means by it.
	base := "."
	if path != "" {
		base = filepath.Dir(path)
	}
	for _, key := range pathKeys {
		p := fieldByPath(cfg, key).Addr().Interface().(*string)
		if *p == "" || filepath.IsAbs(*p) {
			continue
		}
		overridden := os.Getenv(envName(key)) != "" || (flags != nil && flags.Changed(key))
		if fromFile[key] && !overridden {
			*p = filepath.Join(base, *p)
		}
		*p = filepath.Clean(*p)
	}
	cfg.derive()

	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config %s:\n%w", displayPath(path), err)
	}
	return cfg, nil
}

// splitList turns "a,b" from the environment into a list.
// mapstructure's StringToSliceHookFunc left "0.8,0.95" unsplit for a
// []float64 target under viper 1.21; TestEnvOverridesFile guards this.
func splitList(from, to reflect.Type, data any) (any, error) {
	s, ok := data.(string)
	if !ok || to.Kind() != reflect.Slice {
		return data, nil
	}
	if strings.TrimSpace(s) == "" {
		return []string{}, nil
	}
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts, nil
}

// pathKeys are the keys holding file system paths.
var pathKeys = []string{
	"cluster.key_file", "cluster.tls.cert", "cluster.tls.key", "cluster.tls.ca", "model.path", "data.train_file", "data.eval_file",
	"data.tokenizer", "checkpoint.dir", "output.dir",
}

// derive fills in the values whose defaults depend on other fields.
func (c *Config) derive() {
	if c.Data.Format == "" {
		c.Data.Format = FormatFromExt(c.Data.TrainFile)
	}
	if c.Data.Tokenizer == "" {
		c.Data.Tokenizer = c.Model.Path
	}
	if c.Model.NumLabels == 0 {
		switch c.Model.Task {
		case TaskClassification, TaskTokenClassification:
			c.Model.NumLabels = max(2, len(c.Model.Labels))
		case TaskRegression:
			c.Model.NumLabels = 1
		}
	}
}

// FormatFromExt maps a dataset file name to its format, or "" when the
// extension is not one ringtune reads.
func FormatFromExt(name string) string {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".jsonl", ".json", ".ndjson":
		return FormatJSONL
	case ".csv":
		return FormatCSV
	case ".tsv":
		return FormatTSV
	}
	return ""
}

// RegisterFlags defines on fs one flag per configuration key, named by its
// key path (--train.lr, --cluster.min_nodes), with the default as its default.
// Only flags set on the command line override the file and the environment.
func RegisterFlags(fs *pflag.FlagSet) {
	def := Default()
	for _, k := range keyPaths(reflect.TypeOf(Config{}), "") {
		val := fieldByPath(def, k.path)
		usage := "see config." + k.goPath
		switch x := val.Interface().(type) {
		case string:
			fs.String(k.path, x, usage)
		case int:
			fs.Int(k.path, x, usage)
		case int64:
			fs.Int64(k.path, x, usage)
		case float64:
			fs.Float64(k.path, x, usage)
		case bool:
			fs.Bool(k.path, x, usage)
		case time.Duration:
			fs.Duration(k.path, x, usage)
		case []string:
			fs.StringSlice(k.path, x, usage)
		case []float64:
			fs.Float64Slice(k.path, x, usage)
		}
	}
}

type keyPath struct {
	path   string // YAML key path, e.g. train.micro_batch
	goPath string // Go field path, e.g. TrainConfig.MicroBatch
}

// keyPaths lists the leaf keys of a config struct type, so that defaults,
// environment binding, flags and unknown-key detection share one source.
func keyPaths(t reflect.Type, prefix string) []keyPath {
	var out []keyPath
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := f.Tag.Get("mapstructure")
		p := name
		if prefix != "" {
			p = prefix + "." + name
		}
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
			out = append(out, keyPaths(f.Type, p)...)
			continue
		}
		out = append(out, keyPath{path: p, goPath: t.Name() + "." + f.Name})
	}
	return out
}

// fieldByPath returns the addressable field of c at a key path.
func fieldByPath(c *Config, path string) reflect.Value {
	v := reflect.ValueOf(c).Elem()
	for _, part := range strings.Split(path, ".") {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			if t.Field(i).Tag.Get("mapstructure") == part {
				v = v.Field(i)
				break
			}
		}
	}
	return v
}

func envName(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// checkEnv rejects RINGTUNE_<SECTION>_* variables that match no key: a
// misspelt override would otherwise be ignored silently. Variables outside the
// config sections (RINGTUNE_LIBTORCH, say) belong to other tools and are left
// alone.
func checkEnv(keys []keyPath) error {
	known := map[string]bool{}
	prefixes := map[string]bool{}
	var names []string
	for _, k := range keys {
		known[envName(k.path)] = true
		names = append(names, envName(k.path))
		sec, _, _ := strings.Cut(k.path, ".")
		prefixes[envName(sec)+"_"] = true
	}
	var errs []error
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		inSection := false
		for p := range prefixes {
			inSection = inSection || strings.HasPrefix(name, p)
		}
		if !inSection || known[name] {
			continue
		}
		errs = append(errs, fmt.Errorf("environment variable %s: no such config key%s", name, hint(name, names)))
	}
	return errors.Join(errs...)
}

// checkEnvTypes parses every RINGTUNE_* variable that names a key as its
// field's type, so that a wrong value is reported with the variable's name
// (the decoder would blame the config file) and a duration without a unit
// is refused as it is in the file.
func checkEnvTypes(keys []keyPath) error {
	var errs []error
	for _, k := range keys {
		name := envName(k.path)
		val, ok := os.LookupEnv(name)
		if !ok {
			continue
		}
		t := fieldByPath(&Config{}, k.path).Type()
		if err := parseAs(t, val); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s (%s): %w", name, k.path, err))
		}
	}
	return errors.Join(errs...)
}

// parseAs checks that s, from the environment, is a valid value of type t.
func parseAs(t reflect.Type, s string) error {
	var err error
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		if s != "0" {
			if _, err := time.ParseDuration(s); err != nil {
				return fmt.Errorf("want a duration with a unit (like 5s, 500ms or 2m), got %q", s)
			}
		}
		return nil
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		_, err = strconv.ParseInt(s, 10, 64)
	case t.Kind() == reflect.Float64:
		_, err = strconv.ParseFloat(s, 64)
	case t.Kind() == reflect.Bool:
		_, err = strconv.ParseBool(s)
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Float64:
		for _, part := range strings.Split(s, ",") {
			if _, e := strconv.ParseFloat(strings.TrimSpace(part), 64); e != nil && strings.TrimSpace(s) != "" {
				err = e
			}
		}
	}
	if err != nil {
		return fmt.Errorf("want %s, got %q", typeName(t), s)
	}
	return nil
}

// parseYAML decodes a config file, rejecting unknown keys with their key
// path and line so that a typo never silently falls back to a default.
func parseYAML(path string, raw []byte, keys []keyPath) (map[string]any, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		// yaml.v3 errors read "yaml: line N: ..."; keep the line, name the file.
		return nil, fmt.Errorf("config %s: malformed YAML: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return map[string]any{}, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config %s:%d: top level must be a mapping of sections (cluster:, model:, ...)", path, root.Line)
	}
	sections := map[string][]string{}
	var sectionNames []string
	for _, k := range keys {
		sec, leaf, _ := strings.Cut(k.path, ".")
		if _, ok := sections[sec]; !ok {
			sectionNames = append(sectionNames, sec)
		}
		sections[sec] = append(sections[sec], leaf)
	}
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], root.Content[i+1]
		leaves, ok := sections[kn.Value]
		if !ok {
			errs = append(errs, fmt.Errorf("config %s:%d: unknown key %q%s", path, kn.Line, kn.Value, hint(kn.Value, sectionNames)))
			continue
		}
		if vn.Kind == yaml.ScalarNode && vn.Tag == "!!null" {
			continue
		}
		if vn.Kind != yaml.MappingNode {
			errs = append(errs, fmt.Errorf("config %s:%d: %s must be a mapping of keys", path, vn.Line, kn.Value))
			continue
		}
		errs = append(errs, checkLeaves(path, kn.Value, vn, leaves)...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var m map[string]any
	if err := doc.Decode(&m); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return m, nil
}

// checkType decodes one leaf value into its field's Go type, so that a
// wrong type is reported with its line here rather than later, by the
// decoder, without one. A duration must carry a unit: a bare 5 would
// otherwise mean 5ns, which nobody writing "settle: 5" means. A bare 0 is
// accepted, being the same in every unit.
func checkType(key string, n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	t := fieldByPath(&Config{}, key).Type()
	if t == reflect.TypeOf(time.Duration(0)) {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!int" && n.Value == "0" {
			return nil
		}
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			return fmt.Errorf("%s: want a duration with a unit (like 5s, 500ms or 2m), got %s", key, describe(n))
		}
		if _, err := time.ParseDuration(n.Value); err != nil {
			return fmt.Errorf("%s: want a duration with a unit (like 5s, 500ms or 2m), got %q", key, n.Value)
		}
		return nil
	}
	// yaml.v3 would truncate 1.5 into an integer field, and take yes/no
	// for a bool, which the decoder after it refuses without a line.
	isInt := t.Kind() == reflect.Int || t.Kind() == reflect.Int64
	isBool := t.Kind() == reflect.Bool
	if err := n.Decode(reflect.New(t).Interface()); err != nil || (isInt && n.Tag != "!!int") || (isBool && n.Tag != "!!bool") {
		return fmt.Errorf("%s: want %s, got %s", key, typeName(t), describe(n))
	}
	return nil
}

// typeName says in words what a field of type t takes.
func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64:
		return "an integer"
	case reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(typeName(t.Elem()), "a ") + "s"
	}
	return t.String()
}

// describe shows a YAML value in an error: a scalar as written, a list or a
// mapping by its kind.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	if n.Tag == "!!str" {
		return fmt.Sprintf("%q", n.Value)
	}
	return n.Value
}

// checkLeaves reports the keys of section node (named name) that are not
// among leaves (key paths relative to the section); a key whose value is a
// mapping is a sub-section (cluster.tls) and is checked the same way.
func checkLeaves(path, name string, node *yaml.Node, leaves []string) []error {
	var errs []error
	for j := 0; j+1 < len(node.Content); j += 2 {
		ln, lv := node.Content[j], node.Content[j+1]
		if slices.Contains(leaves, ln.Value) {
			if err := checkType(name+"."+ln.Value, lv); err != nil {
				errs = append(errs, fmt.Errorf("config %s:%d: %w", path, lv.Line, err))
			}
			continue
		}
		var sub []string
		for _, l := range leaves {
			if rest, ok := strings.CutPrefix(l, ln.Value+"."); ok {
				sub = append(sub, rest)
			}
		}
		if len(sub) > 0 && lv.Kind == yaml.MappingNode {
			errs = append(errs, checkLeaves(path, name+"."+ln.Value, lv, sub)...)
			continue
		}
		if len(sub) > 0 && lv.Kind == yaml.ScalarNode && lv.Tag == "!!null" {
			continue
		}
		errs = append(errs, fmt.Errorf("config %s:%d: unknown key %q%s", path, ln.Line, name+"."+ln.Value, hint(name+"."+ln.Value, prefixed(name, leaves))))
	}
	return errs
}

func prefixed(prefix string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = prefix + "." + n
	}
	return out
}

// hint suggests the nearest known name when it is close enough to be a typo.
func hint(name string, known []string) string {
	best, bestD := "", 1<<30
	for _, k := range known {
		if d := levenshtein(strings.ToLower(name), strings.ToLower(k)); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" || bestD > max(2, len(name)/3) {
		return fmt.Sprintf(" (known: %s)", strings.Join(known, ", "))
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func displayPath(path string) string {
	if path == "" {
		return "(no file)"
	}
	return path
}
