package safetensors

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// ReadTorchBin reads a PyTorch checkpoint written by torch.save(state_dict)
// (the zip format of PyTorch ≥ 1.6, e.g. pytorch_model.bin) and returns its
// tensors in state_dict order, with Data copied out of the archive.
//
// The pickle inside is interpreted, never executed: only the handful of
// objects a state_dict of tensors contains are understood (OrderedDict,
// torch._utils._rebuild_tensor_v2 over a persistent storage reference), and
// anything else is an error, so a hostile file cannot run code. Tensors must
// be contiguous (a state_dict's are); views with other strides are refused.
func ReadTorchBin(path string) ([]Tensor, error) {
	zr, err := zip.OpenReader(path)
	if err != nil {
		if errors.Is(err, zip.ErrFormat) {
			return nil, fmt.Errorf("read torch checkpoint %s: not a zip archive; it is probably a pre-1.6 (legacy) torch.save file: re-save it with a current PyTorch, or convert it to safetensors", path)
		}
		return nil, fmt.Errorf("read torch checkpoint: %w", err)
	}
	defer zr.Close()
	tensors, err := readTorchZip(&zr.Reader)
	if err != nil {
		return nil, fmt.Errorf("read torch checkpoint %s: %w", path, err)
	}
	return tensors, nil
}

func readTorchZip(zr *zip.Reader) ([]Tensor, error) {
	var prefix string
	entries := map[string]*zip.File{}
	for _, f := range zr.File {
		entries[f.Name] = f
		// The record prefix is the archive's stem ("archive/", or the file
		// name torch.save was given), so find it from data.pkl.
		if strings.HasSuffix(f.Name, "/data.pkl") && strings.Count(f.Name, "/") == 1 {
			prefix = strings.TrimSuffix(f.Name, "data.pkl")
		}
	}
	if prefix == "" {
		return nil, fmt.Errorf("no <name>/data.pkl in the archive: not a torch.save checkpoint")
	}
	if bo, ok := entries[prefix+"byteorder"]; ok {
		b, err := readEntry(bo, 16)
		if err != nil {
			return nil, err
		}
		if string(b) != "little" {
			return nil, fmt.Errorf("checkpoint byte order is %q; only little-endian checkpoints are supported", b)
		}
	}
	pkl, err := readEntry(entries[prefix+"data.pkl"], 1<<30)
	if err != nil {
		return nil, err
	}
	storages := map[string][]byte{}
	loadStorage := func(s *torchStorage) ([]byte, error) {
		if b, ok := storages[s.key]; ok {
			return b, nil
		}
		f := entries[prefix+"data/"+s.key]
		if f == nil {
			return nil, fmt.Errorf("storage %q referenced by the pickle is missing from the archive (truncated file?)", s.key)
		}
		want := s.numel * int64(s.dtype.Size())
		if s.numel < 0 || int64(f.UncompressedSize64) != want {
			return nil, fmt.Errorf("storage %q is %d bytes, want %d for %d %s elements (truncated file?)", s.key, f.UncompressedSize64, want, s.numel, s.dtype)
		}
		b, err := readEntry(f, want)
		if err != nil {
			return nil, err
		}
		storages[s.key] = b
		return b, nil
	}

	root, err := unpickle(pkl)
	if err != nil {
		return nil, fmt.Errorf("%sdata.pkl: %w", prefix, err)
	}
	d, ok := root.(*pyDict)
	if !ok {
		return nil, fmt.Errorf("top-level object is %s, not a state_dict (save model.state_dict(), not the model or a training-state dict)", pyTypeName(root))
	}
	var out []Tensor
	for i, k := range d.keys {
		name, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("state_dict key %v is not a string", k)
		}
		t, ok := d.vals[i].(*torchTensor)
		if !ok {
			return nil, fmt.Errorf("tensor %q: value is %s, not a tensor (nested dicts are not a plain state_dict)", name, pyTypeName(d.vals[i]))
		}
		data, err := loadStorage(t.storage)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		b, err := t.bytes(data)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		out = append(out, Tensor{Name: name, DType: t.storage.dtype, Shape: t.size, Data: b})
	}
	return out, nil
}

func readEntry(f *zip.File, max int64) ([]byte, error) {
	if f == nil {
		return nil, fmt.Errorf("archive entry missing")
	}
	if f.UncompressedSize64 > uint64(max) {
		return nil, fmt.Errorf("archive entry %s is %d bytes, more than the expected %d", f.Name, f.UncompressedSize64, max)
	}
	r, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("archive entry %s: %w", f.Name, err)
	}
	defer r.Close()
	b := make([]byte, f.UncompressedSize64)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("archive entry %s: %w", f.Name, err)
	}
	return b, nil
}

// storageDTypes maps torch's typed-storage class names to dtypes.
var storageDTypes = map[string]DType{
	"FloatStorage": F32, "HalfStorage": F16, "BFloat16Storage": BF16,
	"DoubleStorage": F64, "LongStorage": I64, "IntStorage": I32,
	"ShortStorage": I16, "CharStorage": I8, "ByteStorage": U8, "BoolStorage": Bool,
}

type torchStorage struct {
	dtype DType
	key   string
	numel int64
}

type torchTensor struct {
	storage      *torchStorage
	offset       int64
	size, stride []int64
}

// bytes extracts the tensor's elements from its storage, which may be
// shared with other tensors (tied weights) and larger than the tensor.
func (t *torchTensor) bytes(storage []byte) ([]byte, error) {
	if len(t.size) != len(t.stride) {
		return nil, fmt.Errorf("size %v and stride %v differ in rank", t.size, t.stride)
	}
	numel := int64(1)
	for _, d := range t.size {
		if d < 0 || d != 0 && numel > math.MaxInt64/d {
			return nil, fmt.Errorf("bad size %v", t.size)
		}
		numel *= d
	}
	// An empty tensor has no elements to lay out, whatever its strides.
	want := int64(1)
	for i := len(t.size) - 1; i >= 0 && numel > 0; i-- {
		if t.size[i] != 1 && t.stride[i] != want {
			return nil, fmt.Errorf("size %v with stride %v is not contiguous; call .contiguous() on it before torch.save", t.size, t.stride)
		}
		want *= t.size[i]
	}
	es := int64(t.storage.dtype.Size())
	if t.offset < 0 || t.offset+numel > t.storage.numel {
		return nil, fmt.Errorf("elements [%d, %d) lie outside its %d-element storage %q", t.offset, t.offset+numel, t.storage.numel, t.storage.key)
	}
	return slices.Clone(storage[t.offset*es : (t.offset+numel)*es]), nil
}

type pyGlobal struct{ module, name string }

type pyDict struct {
	keys, vals []any
}

func (d *pyDict) set(k, v any) error {
	switch k.(type) {
	case string, int64, bool, nil:
	default:
		return fmt.Errorf("dict key of type %s is not supported", pyTypeName(k))
	}
	for i, old := range d.keys {
		if old == k {
			d.vals[i] = v
			return nil
		}
	}
	d.keys = append(d.keys, k)
	d.vals = append(d.vals, v)
	return nil
}

type pyMark struct{}

func pyTypeName(v any) string {
	switch v := v.(type) {
	case *pyDict:
		return "a dict"
	case []any:
		return "a tuple"
	case *[]any:
		return "a list"
	case string:
		return "a string"
	case int64:
		return "an int"
	case float64:
		return "a float"
	case bool:
		return "a bool"
	case nil:
		return "None"
	case *torchTensor:
		return "a tensor"
	case *torchStorage:
		return "a storage"
	case pyGlobal:
		return "the global " + v.module + "." + v.name
	}
	return fmt.Sprintf("%T", v)
}

// unpickle interprets the subset of pickle protocol 2 that torch.save emits
// for a state_dict.
func unpickle(p []byte) (any, error) {
	var stack []any
	memo := map[uint32]any{}
	pos := 0
	need := func(n int) ([]byte, error) {
		if n < 0 || len(p)-pos < n {
			return nil, fmt.Errorf("pickle truncated at byte %d", pos)
		}
		b := p[pos : pos+n]
		pos += n
		return b, nil
	}
	pop := func() (any, error) {
		if len(stack) == 0 {
			return nil, fmt.Errorf("pickle stack underflow at byte %d", pos)
		}
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if _, ok := v.(pyMark); ok {
			return nil, fmt.Errorf("unexpected mark at byte %d", pos)
		}
		return v, nil
	}
	popMark := func() ([]any, error) {
		for i := len(stack) - 1; i >= 0; i-- {
			if _, ok := stack[i].(pyMark); ok {
				items := slices.Clone(stack[i+1:])
				stack = stack[:i]
				return items, nil
			}
		}
		return nil, fmt.Errorf("no mark on the pickle stack at byte %d", pos)
	}
	line := func() (string, error) {
		i := bytes.IndexByte(p[pos:], '\n')
		if i < 0 {
			return "", fmt.Errorf("pickle truncated at byte %d", pos)
		}
		s := string(p[pos : pos+i])
		pos += i + 1
		return s, nil
	}
	for {
		if pos >= len(p) {
			return nil, fmt.Errorf("pickle ends without STOP")
		}
		op := p[pos]
		at := pos
		pos++
		var err error
		switch op {
		case 0x80: // PROTO
			var b []byte
			if b, err = need(1); err == nil && b[0] > 2 {
				// Protocols 3-5 add opcodes this reader does not know.
				return nil, fmt.Errorf("pickle protocol %d; only protocol 2 (torch.save's default) is supported", b[0])
			}
		case '.': // STOP
			v, err := pop()
			if err != nil {
				return nil, err
			}
			return v, nil
		case '(':
			stack = append(stack, pyMark{})
		case ')':
			stack = append(stack, []any{})
		case ']':
			stack = append(stack, &[]any{})
		case '}':
			stack = append(stack, &pyDict{})
		case 'N':
			stack = append(stack, nil)
		case 0x88, 0x89:
			stack = append(stack, op == 0x88)
		case 'K':
			var b []byte
			if b, err = need(1); err == nil {
				stack = append(stack, int64(b[0]))
			}
		case 'M':
			var b []byte
			if b, err = need(2); err == nil {
				stack = append(stack, int64(binary.LittleEndian.Uint16(b)))
			}
		case 'J':
			var b []byte
			if b, err = need(4); err == nil {
				stack = append(stack, int64(int32(binary.LittleEndian.Uint32(b))))
			}
		case 0x8a: // LONG1
			var b []byte
			if b, err = need(1); err == nil {
				n := int(b[0])
				if n > 8 {
					return nil, fmt.Errorf("integer of %d bytes at byte %d is too large", n, at)
				}
				if b, err = need(n); err == nil {
					var v uint64
					for i := n - 1; i >= 0; i-- {
						v = v<<8 | uint64(b[i])
					}
					if n > 0 && n < 8 && b[n-1]&0x80 != 0 {
						v |= ^uint64(0) << (8 * n) // sign-extend
					}
					stack = append(stack, int64(v))
				}
			}
		case 'G':
			var b []byte
			if b, err = need(8); err == nil {
				stack = append(stack, math.Float64frombits(binary.BigEndian.Uint64(b)))
			}
		case 'X', 'T': // BINUNICODE, BINSTRING
			var b []byte
			if b, err = need(4); err == nil {
				if b, err = need(int(binary.LittleEndian.Uint32(b))); err == nil {
					stack = append(stack, string(b))
				}
			}
		case 'U', 0x8c: // SHORT_BINSTRING, SHORT_BINUNICODE
			var b []byte
			if b, err = need(1); err == nil {
				if b, err = need(int(b[0])); err == nil {
					stack = append(stack, string(b))
				}
			}
		case 'q', 'r': // BINPUT, LONG_BINPUT
			n := 1
			if op == 'r' {
				n = 4
			}
			var b []byte
			if b, err = need(n); err == nil {
				if len(stack) == 0 {
					return nil, fmt.Errorf("memo put on an empty stack at byte %d", at)
				}
				memo[leUint(b)] = stack[len(stack)-1]
			}
		case 'h', 'j': // BINGET, LONG_BINGET
			n := 1
			if op == 'j' {
				n = 4
			}
			var b []byte
			if b, err = need(n); err == nil {
				v, ok := memo[leUint(b)]
				if !ok {
					return nil, fmt.Errorf("memo entry %d missing at byte %d", leUint(b), at)
				}
				stack = append(stack, v)
			}
		case 'c': // GLOBAL
			var mod, name string
			if mod, err = line(); err == nil {
				if name, err = line(); err == nil {
					stack = append(stack, pyGlobal{mod, name})
				}
			}
		case 't':
			var items []any
			if items, err = popMark(); err == nil {
				stack = append(stack, items)
			}
		case 0x85, 0x86, 0x87: // TUPLE1..3
			n := int(op-0x85) + 1
			items := make([]any, n)
			for i := n - 1; i >= 0 && err == nil; i-- {
				items[i], err = pop()
			}
			stack = append(stack, items)
		case 'a', 'e': // APPEND, APPENDS
			var items []any
			if op == 'a' {
				var v any
				v, err = pop()
				items = []any{v}
			} else {
				items, err = popMark()
			}
			if err == nil {
				l, ok := stackTop(stack).(*[]any)
				if !ok {
					return nil, fmt.Errorf("append to %s at byte %d", pyTypeName(stackTop(stack)), at)
				}
				*l = append(*l, items...)
			}
		case 's', 'u': // SETITEM, SETITEMS
			var items []any
			if op == 's' {
				var k, v any
				if v, err = pop(); err == nil {
					k, err = pop()
				}
				items = []any{k, v}
			} else {
				items, err = popMark()
			}
			if err == nil {
				d, ok := stackTop(stack).(*pyDict)
				if !ok || len(items)%2 != 0 {
					return nil, fmt.Errorf("setitem on %s at byte %d", pyTypeName(stackTop(stack)), at)
				}
				for i := 0; i < len(items) && err == nil; i += 2 {
					err = d.set(items[i], items[i+1])
				}
			}
		case 'Q': // BINPERSID
			var pid any
			if pid, err = pop(); err == nil {
				var s *torchStorage
				if s, err = persistentLoad(pid); err == nil {
					stack = append(stack, s)
				}
			}
		case 'R': // REDUCE
			var args, fn any
			if args, err = pop(); err == nil {
				if fn, err = pop(); err == nil {
					var v any
					if v, err = reduce(fn, args); err == nil {
						stack = append(stack, v)
					}
				}
			}
		case 0x81: // NEWOBJ: only ever a custom class in torch.save output
			var cls any
			if _, err = pop(); err == nil {
				if cls, err = pop(); err == nil {
					return nil, fmt.Errorf("the pickle holds an object of %s: save model.state_dict() rather than the model itself", pyTypeName(cls))
				}
			}
		case 'b': // BUILD
			if _, err = pop(); err == nil {
				// torch attaches the state_dict's _metadata (module versions)
				// to the OrderedDict this way; it carries no weights.
				if _, ok := stackTop(stack).(*pyDict); !ok {
					return nil, fmt.Errorf("BUILD on %s at byte %d is not supported", pyTypeName(stackTop(stack)), at)
				}
			}
		default:
			return nil, fmt.Errorf("pickle opcode %#x at byte %d is not supported (not a plain torch.save state_dict?)", op, at)
		}
		if err != nil {
			return nil, err
		}
	}
}

func stackTop(s []any) any {
	if len(s) == 0 {
		return nil
	}
	return s[len(s)-1]
}

func leUint(b []byte) uint32 {
	var v uint32
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint32(b[i])
	}
	return v
}

// persistentLoad resolves torch's ('storage', StorageType, key, location,
// numel) references to the archive's data/<key> entries.
func persistentLoad(pid any) (*torchStorage, error) {
	t, ok := pid.([]any)
	if !ok || len(t) != 5 || t[0] != "storage" {
		return nil, fmt.Errorf("persistent id %v is not a torch storage reference", pid)
	}
	g, ok1 := t[1].(pyGlobal)
	key, ok2 := t[2].(string)
	numel, ok3 := t[4].(int64)
	if !ok1 || !ok2 || !ok3 || g.module != "torch" {
		return nil, fmt.Errorf("malformed storage reference %v", pid)
	}
	dt, ok := storageDTypes[g.name]
	if !ok {
		return nil, fmt.Errorf("storage type torch.%s is not supported", g.name)
	}
	return &torchStorage{dtype: dt, key: key, numel: numel}, nil
}

func reduce(fn, args any) (any, error) {
	g, ok := fn.(pyGlobal)
	a, ok2 := args.([]any)
	if !ok || !ok2 {
		return nil, fmt.Errorf("cannot call %s", pyTypeName(fn))
	}
	switch g.module + "." + g.name {
	case "collections.OrderedDict":
		if len(a) != 0 {
			return nil, fmt.Errorf("OrderedDict with arguments is not supported")
		}
		return &pyDict{}, nil
	case "torch._utils._rebuild_tensor_v2":
		// (storage, storage_offset, size, stride, requires_grad,
		// backward_hooks[, metadata])
		if len(a) < 4 {
			return nil, fmt.Errorf("_rebuild_tensor_v2 with %d arguments", len(a))
		}
		s, ok1 := a[0].(*torchStorage)
		off, ok2 := a[1].(int64)
		size, ok3 := intTuple(a[2])
		stride, ok4 := intTuple(a[3])
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return nil, fmt.Errorf("malformed _rebuild_tensor_v2 arguments")
		}
		return &torchTensor{storage: s, offset: off, size: size, stride: stride}, nil
	case "torch._utils._rebuild_parameter":
		if len(a) < 1 {
			return nil, fmt.Errorf("_rebuild_parameter without data")
		}
		return a[0], nil
	}
	return nil, fmt.Errorf("the pickle calls %s.%s, which a plain state_dict of dense tensors does not contain (quantized, sparse or custom objects are not supported)", g.module, g.name)
}

func intTuple(v any) ([]int64, bool) {
	t, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]int64, len(t))
	for i, x := range t {
		if out[i], ok = x.(int64); !ok {
			return nil, false
		}
	}
	return out, true
}
