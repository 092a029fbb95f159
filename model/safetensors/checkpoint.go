package safetensors

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// File names Hugging Face uses inside a model directory.
const (
	SingleFileName = "model.safetensors"
	IndexFileName  = "model.safetensors.index.json"
)

// Checkpoint is a model's weights, from one file or from several shards
// joined by an index, presented as one set of tensors. Like File, its
// methods may run concurrently with each other but not with Close.
type Checkpoint struct {
	files []*File
	owner map[string]*File
	names []string
}

// Load opens a checkpoint. path may be a model directory (model.safetensors
// is preferred, as transformers does, then model.safetensors.index.json), an
// index file (*.index.json), or a single .safetensors file.
func Load(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load checkpoint: %w", err)
	}
	if st.IsDir() {
		single := filepath.Join(path, SingleFileName)
		if _, err := os.Stat(single); err == nil {
			path = single
		} else if idx := filepath.Join(path, IndexFileName); fileExists(idx) {
			path = idx
		} else {
			return nil, fmt.Errorf("load checkpoint %s: directory has neither %s nor %s (is this a Hugging Face model directory with safetensors weights?)",
				path, SingleFileName, IndexFileName)
		}
	}
	if strings.HasSuffix(path, ".index.json") {
		return OpenIndex(path)
	}
	f, err := Open(path)
	if err != nil {
		return nil, fmt.Errorf("load checkpoint: %w", err)
	}
	c := &Checkpoint{files: []*File{f}, owner: map[string]*File{}, names: f.Names()}
	for _, n := range c.names {
		c.owner[n] = f
	}
	return c, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// index is the JSON of model.safetensors.index.json.
type index struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// OpenIndex opens a sharded checkpoint through its index. The index and the
// shards must agree exactly: a tensor the index places in a shard that lacks
// it, or a shard tensor the index does not place there, is an error naming
// both, since either means a partial download or shards from two saves.
func OpenIndex(indexPath string) (c *Checkpoint, err error) {
	raw, err := os.ReadFile(indexPath)
	if err != nil {
		return nil, fmt.Errorf("load checkpoint: %w", err)
	}
	var idx index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("load checkpoint %s: bad index JSON: %w", indexPath, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("load checkpoint %s: index has no weight_map entries", indexPath)
	}
	dir := filepath.Dir(indexPath)
	c = &Checkpoint{owner: map[string]*File{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
			c = nil
		}
	}()
	byShard := map[string]*File{}
	for _, shard := range slices.Sorted(maps.Values(idx.WeightMap)) {
		if byShard[shard] != nil {
			continue
		}
		// Shards are siblings of the index; anything else would let an index
		// reach files outside the model directory.
		if shard == "" || shard != filepath.Base(shard) || shard == "." || shard == ".." {
			return c, fmt.Errorf("load checkpoint %s: shard name %q is not a file name in the index's directory", indexPath, shard)
		}
		f, err := Open(filepath.Join(dir, shard))
		if err != nil {
			return c, fmt.Errorf("load checkpoint %s: %w", indexPath, err)
		}
		byShard[shard] = f
		c.files = append(c.files, f)
	}
	for _, name := range slices.Sorted(maps.Keys(idx.WeightMap)) {
		f := byShard[idx.WeightMap[name]]
		if _, ok := f.Info(name); !ok {
			return c, fmt.Errorf("load checkpoint %s: index places tensor %q in %s, but that shard has no such tensor (incomplete download or mixed saves?)",
				indexPath, name, f.Path())
		}
		c.owner[name] = f
		c.names = append(c.names, name)
	}
	for _, f := range c.files {
		for _, name := range f.Names() {
			if c.owner[name] != f {
				where := "does not list it"
				if o := c.owner[name]; o != nil {
					where = "places it in " + o.Path()
				}
				return c, fmt.Errorf("load checkpoint %s: shard %s holds tensor %q but the index %s (incomplete download or mixed saves?)",
					indexPath, f.Path(), name, where)
			}
		}
	}
	return c, nil
}

// Files lists the paths of the opened safetensors files.
func (c *Checkpoint) Files() []string {
	out := make([]string, len(c.files))
	for i, f := range c.files {
		out[i] = f.Path()
	}
	return out
}

// Names lists all tensors, sorted.
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Metadata is the __metadata__ of the first file (shards written together
// carry the same metadata).
func (c *Checkpoint) Metadata() map[string]string {
	if len(c.files) == 0 {
		return nil
	}
	return c.files[0].Metadata()
}

func (c *Checkpoint) file(name string) (*File, error) {
	f := c.owner[name]
	if f == nil {
		return nil, fmt.Errorf("checkpoint %s: no tensor %q (the checkpoint does not match the model architecture?)",
			strings.Join(c.Files(), ", "), name)
	}
	return f, nil
}

// FileOf is the path of the file holding tensor name ("" if none does), for
// error messages that must say which shard is wrong.
func (c *Checkpoint) FileOf(name string) string {
	if f := c.owner[name]; f != nil {
		return f.Path()
	}
	return ""
}

// Info describes one tensor; ok is false when there is no such tensor.
func (c *Checkpoint) Info(name string) (info TensorInfo, ok bool) {
	if f := c.owner[name]; f != nil {
		return f.Info(name)
	}
	return TensorInfo{}, false
}

// Tensor returns a zero-copy view of a tensor; see File.Tensor.
func (c *Checkpoint) Tensor(name string) (Tensor, error) {
	f, err := c.file(name)
	if err != nil {
		return Tensor{}, err
	}
	return f.Tensor(name)
}

// Float32s returns a tensor converted to float32; see File.Float32s.
func (c *Checkpoint) Float32s(name string) ([]float32, error) {
	f, err := c.file(name)
	if err != nil {
		return nil, err
	}
	return f.Float32s(name)
}

// Float32sInto decodes a tensor into dst; see File.Float32sInto.
func (c *Checkpoint) Float32sInto(name string, dst []float32) error {
	f, err := c.file(name)
	if err != nil {
		return err
	}
	return f.Float32sInto(name, dst)
}

// Int64s returns an integer tensor widened to int64; see File.Int64s.
func (c *Checkpoint) Int64s(name string) ([]int64, error) {
	f, err := c.file(name)
	if err != nil {
		return nil, err
	}
	return f.Int64s(name)
}

// Close unmaps every file.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

var shardName = regexp.MustCompile(`^model-[0-9]{5}-of-[0-9]{5}\.safetensors$`)

// WriteDir saves tensors into a Hugging Face model directory. When
// maxShardBytes > 0 and the tensors' data exceeds it, they are split, in the
// given order, into model-0000k-of-0000n.safetensors shards of at most that
// many bytes (a tensor larger than the limit gets a shard of its own), plus
// model.safetensors.index.json; otherwise a single model.safetensors is
// written. It returns the paths written.
//
// Each file is replaced atomically and the index is written after every
// shard it names. Weight files of an earlier save that the new one does not
// use are removed afterwards, because transformers prefers model.safetensors
// over an index and would otherwise load stale weights. A crash midway can
// still leave new shards beside an old index; for an all-or-nothing
// checkpoint, save into a fresh directory and rename it into place.
func WriteDir(dir string, tensors []Tensor, metadata map[string]string, maxShardBytes int64) ([]string, error) {
	if err := checkTensors(tensors); err != nil {
		return nil, fmt.Errorf("write checkpoint %s: %w", dir, err)
	}
	var shards [][]Tensor
	var cur []Tensor
	var curBytes, total int64
	for _, t := range tensors {
		n := int64(len(t.Data))
		total += n
		if maxShardBytes > 0 && len(cur) > 0 && curBytes+n > maxShardBytes {
			shards = append(shards, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, t)
		curBytes += n
	}
	shards = append(shards, cur)

	var written []string
	if len(shards) == 1 {
		p := filepath.Join(dir, SingleFileName)
		if err := Write(p, tensors, metadata); err != nil {
			return nil, err
		}
		written = append(written, p)
	} else {
		idx := index{Metadata: map[string]any{"total_size": total}, WeightMap: map[string]string{}}
		for i, s := range shards {
			name := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
			p := filepath.Join(dir, name)
			if err := Write(p, s, metadata); err != nil {
				return written, err
			}
			written = append(written, p)
			for _, t := range s {
				idx.WeightMap[t.Name] = name
			}
		}
		// Same shape as the index transformers writes: sorted keys, 2-space
		// indent, trailing newline.
		raw, err := json.MarshalIndent(idx, "", "  ")
		if err != nil {
			return written, fmt.Errorf("write checkpoint %s: %w", dir, err)
		}
		p := filepath.Join(dir, IndexFileName)
		err = writeAtomic(p, func(w *bufio.Writer) error {
			w.Write(raw)
			w.WriteByte('\n')
			return w.Flush()
		})
		if err != nil {
			return written, fmt.Errorf("write checkpoint index %s: %w", p, err)
		}
		written = append(written, p)
	}
	if err := removeStale(dir, written); err != nil {
		return written, fmt.Errorf("write checkpoint %s: %w", dir, err)
	}
	return written, nil
}

// removeStale deletes weight files of an earlier save that are not in keep.
func removeStale(dir string, keep []string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		n := e.Name()
		p := filepath.Join(dir, n)
		if slices.Contains(keep, p) || !(n == SingleFileName || n == IndexFileName || shardName.MatchString(n)) {
			continue
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, fmt.Errorf("remove stale weights: %w", err))
		}
	}
	return errors.Join(errs...)
}
