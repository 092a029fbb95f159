package safetensors

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// FromFloat32 builds an F32 tensor from float32 values; Write checks that
// the shape matches the number of values.
func FromFloat32(name string, shape []int64, values []float32) Tensor {
	return Tensor{Name: name, DType: F32, Shape: slices.Clone(shape), Data: Float32Bytes(values)}
}

// Write stores tensors and optional string metadata as one safetensors file
// at path. The file is written under a temporary name in the same directory,
// fsynced and renamed over path, so a crash leaves either the old file or the
// complete new one, never a torn one.
//
// Output is deterministic: tensors are laid out by decreasing element size,
// then by name (so every tensor is aligned to its element size, as in files
// from the reference writer), and the header is padded with spaces to a
// multiple of 8 bytes.
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	if err := checkTensors(tensors); err != nil {
		return fmt.Errorf("write safetensors %s: %w", path, err)
	}
	err := writeAtomic(path, func(w *bufio.Writer) error {
		return encode(w, tensors, metadata)
	})
	if err != nil {
		return fmt.Errorf("write safetensors %s: %w", path, err)
	}
	return nil
}

// checkTensors rejects input that would produce a file no reader accepts.
func checkTensors(tensors []Tensor) error {
	seen := make(map[string]bool, len(tensors))
	for _, t := range tensors {
		switch {
		case t.Name == "":
			return fmt.Errorf("a tensor has an empty name")
		case t.Name == metadataKey:
			return fmt.Errorf("tensor name %q is reserved for metadata", t.Name)
		case seen[t.Name]:
			return fmt.Errorf("tensor %q given twice", t.Name)
		case t.DType.Size() == 0:
			return fmt.Errorf("tensor %q: unknown dtype %q", t.Name, t.DType)
		}
		seen[t.Name] = true
		n := int64(1)
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("tensor %q: negative dimension in shape %v", t.Name, t.Shape)
			}
			n *= d
		}
		if want := n * int64(t.DType.Size()); want != int64(len(t.Data)) {
			return fmt.Errorf("tensor %q: shape %v of %s needs %d bytes, got %d", t.Name, t.Shape, t.DType, want, len(t.Data))
		}
	}
	return nil
}

// layout orders tensors for the data section.
func layout(tensors []Tensor) []Tensor {
	out := slices.Clone(tensors)
	slices.SortStableFunc(out, func(a, b Tensor) int {
		if c := b.DType.Size() - a.DType.Size(); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// headerBytes renders the padded JSON header for tensors already in layout
// order. It is built by hand because encoding/json would sort the keys
// (splitting header order from data order) and escape <, > and &.
func headerBytes(ordered []Tensor, metadata map[string]string) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	if len(metadata) > 0 {
		b.WriteString(`"__metadata__":{`)
		for i, k := range slices.Sorted(maps.Keys(metadata)) {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(&b, k)
			b.WriteByte(':')
			writeJSONString(&b, metadata[k])
		}
		b.WriteByte('}')
	}
	var off int64
	for i, t := range ordered {
		if i > 0 || len(metadata) > 0 {
			b.WriteByte(',')
		}
		writeJSONString(&b, t.Name)
		b.WriteString(`:{"dtype":"`)
		b.WriteString(string(t.DType))
		b.WriteString(`","shape":[`)
		for j, d := range t.Shape {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatInt(d, 10))
		}
		b.WriteString(`],"data_offsets":[`)
		b.WriteString(strconv.FormatInt(off, 10))
		off += int64(len(t.Data))
		b.WriteByte(',')
		b.WriteString(strconv.FormatInt(off, 10))
		b.WriteString("]}")
	}
	b.WriteByte('}')
	// Padding keeps the data section 8-byte aligned in the file, so a mapped
	// tensor can be reinterpreted in place.
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	return b.Bytes()
}

func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // encoding a string into a bytes.Buffer cannot fail
	b.Truncate(b.Len() - 1) // Encode appends a newline
}

func encode(w *bufio.Writer, tensors []Tensor, metadata map[string]string) error {
	ordered := layout(tensors)
	hdr := headerBytes(ordered, metadata)
	var n [8]byte
	for i := range 8 {
		n[i] = byte(uint64(len(hdr)) >> (8 * i))
	}
	// bufio.Writer errors are sticky, so checking the last Write and Flush
	// catches a failure of any earlier one.
	w.Write(n[:])
	w.Write(hdr)
	for _, t := range ordered {
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
	}
	return w.Flush()
}

// writeAtomic writes a file via a temporary sibling, fsync and rename, then
// fsyncs the directory so the rename itself survives a crash.
func writeAtomic(path string, fill func(*bufio.Writer) error) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = fill(bufio.NewWriterSize(tmp, 1<<20)); err != nil {
		return err
	}
	// CreateTemp makes the file 0600; a checkpoint is an ordinary file.
	if err = tmp.Chmod(0o644); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
