package safetensors

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
)

// Tensor is one named tensor with its raw little-endian bytes, row-major.
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Data  []byte
}

// File is one opened safetensors file. Its methods may be called from many
// goroutines at once, but not concurrently with Close.
type File struct {
	path   string
	h      *header
	buf    []byte // the whole file, mapped read-only
	unmap  func() error
	closed bool
}

// Open maps and validates one safetensors file. Every structural check runs
// here, so a File that opened successfully serves every tensor it lists.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open safetensors: %w", err)
	}
	defer f.Close() // the mapping outlives the descriptor
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open safetensors %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("open safetensors %s: not a regular file", path)
	}
	buf, unmap, err := mapFile(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("open safetensors %s: %w", path, err)
	}
	h, err := parseHeader(buf, path)
	if err != nil {
		return nil, errors.Join(err, unmap())
	}
	return &File{path: path, h: h, buf: buf, unmap: unmap}, nil
}

// Path is the file's path as given to Open.
func (f *File) Path() string { return f.path }

// Names lists the tensors in the file, sorted.
func (f *File) Names() []string {
	out := make([]string, len(f.h.tensors))
	for i, t := range f.h.tensors {
		out[i] = t.Name
	}
	return out
}

// Metadata is a copy of the file's __metadata__ (nil when it has none).
func (f *File) Metadata() map[string]string { return maps.Clone(f.h.metadata) }

// Info describes one tensor; ok is false when the file has no such tensor.
func (f *File) Info(name string) (info TensorInfo, ok bool) {
	i, ok := f.h.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	info = f.h.tensors[i]
	info.Shape = slices.Clone(info.Shape)
	return info, true
}

// Tensor returns a tensor with Data viewing the mapped file: no copy is made.
// The bytes are read-only (writing to them faults) and valid only until
// Close; copy them if they must outlive the File.
func (f *File) Tensor(name string) (Tensor, error) {
	if f.closed {
		return Tensor{}, fmt.Errorf("safetensors %s: tensor %q: file already closed", f.path, name)
	}
	info, ok := f.Info(name)
	if !ok {
		return Tensor{}, fmt.Errorf("safetensors %s: no tensor %q (the checkpoint does not match the model architecture?)", f.path, name)
	}
	lo, hi := f.h.dataStart+info.Begin, f.h.dataStart+info.End
	return Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: f.buf[lo:hi:hi]}, nil
}

// Float32s returns a tensor's elements converted to float32: F32, F16 and
// BF16 exactly, F64 rounded to nearest. The slice is a fresh copy.
func (f *File) Float32s(name string) ([]float32, error) {
	t, err := f.Tensor(name)
	if err != nil {
		return nil, err
	}
	v, err := decodeFloat32s(t.DType, t.Data)
	if err != nil {
		return nil, fmt.Errorf("safetensors %s: tensor %q: %w", f.path, name, err)
	}
	return v, nil
}

// Float32sInto is Float32s into dst, which must hold exactly the tensor's
// elements: it decodes from the mapped file straight into dst, so loading a
// model costs no copy of its weights besides the parameter block itself.
func (f *File) Float32sInto(name string, dst []float32) error {
	t, err := f.Tensor(name)
	if err != nil {
		return err
	}
	if err := decodeFloat32sInto(t.DType, t.Data, dst); err != nil {
		return fmt.Errorf("safetensors %s: tensor %q: %w", f.path, name, err)
	}
	return nil
}

// Int64s returns an integer or BOOL tensor's elements widened to int64.
func (f *File) Int64s(name string) ([]int64, error) {
	t, err := f.Tensor(name)
	if err != nil {
		return nil, err
	}
	v, err := decodeInt64s(t.DType, t.Data)
	if err != nil {
		return nil, fmt.Errorf("safetensors %s: tensor %q: %w", f.path, name, err)
	}
	return v, nil
}

// Close unmaps the file. Tensor data obtained from it must not be used
// afterwards.
func (f *File) Close() error {
	if f.closed {
		return nil
	}
	f.closed = true
	f.buf = nil
	if err := f.unmap(); err != nil {
		return fmt.Errorf("close safetensors %s: %w", f.path, err)
	}
	return nil
}

// Float32s converts a floating-point tensor's bytes (F32, F16, BF16, F64) to
// float32, for tensors that did not come from a File (ReadTorchBin).
func (t Tensor) Float32s() ([]float32, error) {
	v, err := decodeFloat32s(t.DType, t.Data)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	return v, nil
}
