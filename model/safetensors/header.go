package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"unicode/utf8"
)

// MaxHeaderSize is the largest JSON header accepted, the same limit as the
// reference implementation: a larger length is far more likely to be a
// corrupt or hostile file than a real checkpoint, and refusing it keeps a
// bad file from making us allocate gigabytes.
const MaxHeaderSize = 100_000_000

// metadataKey is the reserved header entry holding free-form string metadata.
const metadataKey = "__metadata__"

// TensorInfo describes one tensor of a checkpoint without its data.
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int64
	// Begin and End are the tensor's byte range within the data section
	// (which starts right after the header).
	Begin, End int64
}

// NumElements is the product of the shape (1 for a scalar).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// FormatError reports a malformed checkpoint. Tensor is empty when the fault
// is not tied to one tensor (a bad length prefix, unparsable JSON).
type FormatError struct {
	Path   string
	Tensor string
	Reason string
}

// Error says what is wrong, where, and that the file must be replaced.
func (e *FormatError) Error() string {
	var b strings.Builder
	b.WriteString("safetensors ")
	b.WriteString(e.Path)
	if e.Tensor != "" {
		fmt.Fprintf(&b, ": tensor %q", e.Tensor)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	b.WriteString(" (the file is corrupt or not a safetensors checkpoint; re-export or re-download it)")
	return b.String()
}

// header is the parsed and validated description of one file.
type header struct {
	tensors  []TensorInfo // sorted by name
	byName   map[string]int
	metadata map[string]string
	// dataStart is the file offset of the data section: 8 + header length.
	dataStart int64
}

// parseHeader parses and validates the header of a whole safetensors file
// held in buf. It accepts exactly what the reference implementation accepts
// (a '{'-initial JSON object, optionally followed by whitespace padding, with
// tensors tiling the data section contiguously from offset 0 to its end),
// and in addition rejects duplicate names, which the reference silently
// resolves by keeping the last.
func parseHeader(buf []byte, path string) (*header, error) {
	fail := func(tensor, format string, args ...any) error {
		return &FormatError{Path: path, Tensor: tensor, Reason: fmt.Sprintf(format, args...)}
	}
	if len(buf) < 8 {
		return nil, fail("", "file is %d bytes, too short for the 8-byte header length", len(buf))
	}
	n := binary.LittleEndian.Uint64(buf)
	if n > MaxHeaderSize {
		return nil, fail("", "header length %d exceeds the %d-byte limit", n, MaxHeaderSize)
	}
	if n > uint64(len(buf)-8) {
		return nil, fail("", "header length %d is larger than the %d bytes that follow it (truncated file?)", n, len(buf)-8)
	}
	raw := buf[8 : 8+n]
	dataLen := int64(len(buf)) - 8 - int64(n)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, fail("", "header does not start with '{'")
	}
	if !utf8.Valid(raw) {
		return nil, fail("", "header is not valid UTF-8")
	}

	h := &header{byName: map[string]int{}, dataStart: 8 + int64(n)}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, fail("", "bad header JSON: %v", err)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fail("", "bad header JSON: %v", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, fail("", "bad header JSON: key %v is not a string", tok)
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, fail(name, "bad header JSON: %v", err)
		}
		if seen[name] {
			return nil, fail(name, "name appears twice in the header")
		}
		seen[name] = true
		if name == metadataKey {
			if err := json.Unmarshal(val, &h.metadata); err != nil {
				return nil, fail("", "__metadata__ must be an object of string values: %v", err)
			}
			continue
		}
		info, err := parseEntry(name, val)
		if err != nil {
			return nil, fail(name, "%v", err)
		}
		h.tensors = append(h.tensors, info)
	}
	if _, err := dec.Token(); err != nil {
		return nil, fail("", "bad header JSON: %v", err)
	}
	rest := raw[dec.InputOffset():]
	if len(bytes.Trim(rest, " \t\r\n")) != 0 {
		return nil, fail("", "bad header JSON: unexpected data after the top-level object")
	}

	if err := checkLayout(h.tensors, dataLen, fail); err != nil {
		return nil, err
	}
	slices.SortFunc(h.tensors, func(a, b TensorInfo) int { return strings.Compare(a.Name, b.Name) })
	for i, t := range h.tensors {
		h.byName[t.Name] = i
	}
	return h, nil
}

// parseEntry decodes one tensor's header entry. Keys are matched exactly
// (encoding/json would also accept "DTYPE"), and unknown keys are ignored as
// the reference implementation does.
func parseEntry(name string, val json.RawMessage) (TensorInfo, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(val, &fields); err != nil || fields == nil {
		return TensorInfo{}, fmt.Errorf("header entry is not a JSON object")
	}
	info := TensorInfo{Name: name}
	var dt string
	if err := decodeField(fields, "dtype", &dt); err != nil {
		return info, err
	}
	info.DType = DType(dt)
	if info.DType.Size() == 0 {
		return info, fmt.Errorf("unknown dtype %q", dt)
	}
	var shape []uint64
	if err := decodeField(fields, "shape", &shape); err != nil {
		return info, err
	}
	var offsets []uint64
	if err := decodeField(fields, "data_offsets", &offsets); err != nil {
		return info, err
	}
	if len(offsets) != 2 {
		return info, fmt.Errorf("data_offsets has %d elements, want [begin, end]", len(offsets))
	}
	// The element count and byte size must fit in int64 so that offset
	// arithmetic below cannot wrap.
	numel := uint64(1)
	info.Shape = make([]int64, len(shape))
	for i, d := range shape {
		hi, lo := bits.Mul64(numel, d)
		if hi != 0 || lo > 1<<62 {
			return info, fmt.Errorf("shape %v has too many elements", shape)
		}
		numel = lo
		info.Shape[i] = int64(d)
	}
	size := numel * uint64(info.DType.Size())
	if size > 1<<62 || offsets[0] > 1<<62 || offsets[1] > 1<<62 {
		return info, fmt.Errorf("data_offsets %v or shape %v out of range", offsets, shape)
	}
	info.Begin, info.End = int64(offsets[0]), int64(offsets[1])
	if info.End < info.Begin {
		return info, fmt.Errorf("data_offsets [%d, %d] end before they begin", info.Begin, info.End)
	}
	if uint64(info.End-info.Begin) != size {
		return info, fmt.Errorf("shape %v of %s needs %d bytes but data_offsets [%d, %d] span %d",
			shape, info.DType, size, info.Begin, info.End, info.End-info.Begin)
	}
	return info, nil
}

func decodeField(fields map[string]json.RawMessage, key string, dst any) error {
	v, ok := fields[key]
	if !ok {
		return fmt.Errorf("header entry has no %q", key)
	}
	if err := json.Unmarshal(v, dst); err != nil {
		return fmt.Errorf("header field %q is malformed: %s", key, v)
	}
	return nil
}

// checkLayout requires the tensors to tile [0, dataLen) exactly: no overlap,
// no gap, nothing past the end, no trailing bytes. The format demands a
// contiguous data section, and a file that violates it was either truncated
// or hand-edited.
func checkLayout(ts []TensorInfo, dataLen int64, fail func(string, string, ...any) error) error {
	order := make([]int, len(ts))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := ts[a].Begin - ts[b].Begin; c != 0 {
			if c < 0 {
				return -1
			}
			return 1
		}
		if c := ts[a].End - ts[b].End; c != 0 {
			if c < 0 {
				return -1
			}
			return 1
		}
		return strings.Compare(ts[a].Name, ts[b].Name)
	})
	var pos int64
	prev := ""
	for _, i := range order {
		t := ts[i]
		switch {
		case t.Begin < pos:
			return fail(t.Name, "data_offsets [%d, %d] overlap tensor %q, which ends at %d", t.Begin, t.End, prev, pos)
		case t.Begin > pos && prev == "":
			return fail(t.Name, "data_offsets [%d, %d] leave bytes [0, %d) of the data section unused", t.Begin, t.End, t.Begin)
		case t.Begin > pos:
			return fail(t.Name, "data_offsets [%d, %d] leave a gap of %d bytes after tensor %q", t.Begin, t.End, t.Begin-pos, prev)
		case t.End > dataLen:
			return fail(t.Name, "data_offsets [%d, %d] extend past the end of the %d-byte data section (truncated file?)", t.Begin, t.End, dataLen)
		}
		pos, prev = t.End, t.Name
	}
	if pos != dataLen {
		return fail("", "data section is %d bytes but tensors cover only %d (trailing garbage or a missing header entry)", dataLen, pos)
	}
	return nil
}
