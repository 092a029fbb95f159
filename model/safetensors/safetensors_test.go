package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// craft assembles a file from a literal header and data section, the way a
// corrupt or foreign writer might.
func craft(hdr string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	b = append(b, hdr...)
	return append(b, data...)
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustOpen(t *testing.T, path string) *File {
	t.Helper()
	f, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestWriteReadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "model.safetensors")
	w := []float32{1, -2.5, float32(math.Inf(1)), 3e-40, 0, 7}
	ids := binary.LittleEndian.AppendUint64(nil, uint64(1<<40))
	ids = binary.LittleEndian.AppendUint64(ids, math.MaxUint64) // -1 as int64
	half := []byte{0x00, 0x3c, 0x01, 0x00, 0x00, 0xfc}          // 1, smallest subnormal, -inf
	in := []Tensor{
		FromFloat32("encoder.w", []int64{2, 3}, w),
		{Name: "ids", DType: I64, Shape: []int64{2}, Data: ids},
		{Name: "h", DType: F16, Shape: []int64{3}, Data: half},
		{Name: "mask", DType: Bool, Shape: []int64{3}, Data: []byte{1, 0, 1}},
		{Name: "empty", DType: F32, Shape: []int64{0, 4}, Data: nil},
		{Name: "scalar", DType: F32, Shape: []int64{}, Data: Float32Bytes([]float32{42})},
	}
	meta := map[string]string{"format": "pt", "note": "<a&b>"}
	if err := Write(p, in, meta); err != nil {
		t.Fatal(err)
	}
	f := mustOpen(t, p)
	if got, want := f.Names(), []string{"empty", "encoder.w", "h", "ids", "mask", "scalar"}; !slices.Equal(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	if got := f.Metadata(); got["format"] != "pt" || got["note"] != "<a&b>" || len(got) != 2 {
		t.Errorf("Metadata = %v", got)
	}
	for _, want := range in {
		got, err := f.Tensor(want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got.DType != want.DType || !slices.Equal(got.Shape, want.Shape) || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("tensor %s = %v %v %x, want %v %v %x", want.Name, got.DType, got.Shape, got.Data, want.DType, want.Shape, want.Data)
		}
	}
	gw, err := f.Float32s("encoder.w")
	if err != nil {
		t.Fatal(err)
	}
	for i := range w {
		if math.Float32bits(gw[i]) != math.Float32bits(w[i]) {
			t.Errorf("encoder.w[%d] = %v, want %v", i, gw[i], w[i])
		}
	}
	gh, err := f.Float32s("h")
	if err != nil {
		t.Fatal(err)
	}
	if want := []float32{1, float32(math.Ldexp(1, -24)), float32(math.Inf(-1))}; !slices.Equal(gh, want) {
		t.Errorf("h = %v, want %v", gh, want)
	}
	gi, err := f.Int64s("ids")
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{1 << 40, -1}; !slices.Equal(gi, want) {
		t.Errorf("ids = %v, want %v", gi, want)
	}
	if _, err := f.Float32s("mask"); err == nil || !strings.Contains(err.Error(), `"mask"`) {
		t.Errorf("Float32s of BOOL: err = %v, want an error naming the tensor", err)
	}
	if _, err := f.Tensor("nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), p) {
		t.Errorf("missing tensor: err = %v, want an error naming file and tensor", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Tensor("h"); err == nil {
		t.Error("Tensor after Close succeeded")
	}
}

// TestWriteLayout pins the on-disk bytes to the format's rules: header length
// prefix, compact JSON padded with spaces to 8 bytes, data by decreasing
// element size then name.
func TestWriteLayout(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.safetensors")
	err := Write(p, []Tensor{
		{Name: "b", DType: U8, Shape: []int64{1}, Data: []byte{9}},
		FromFloat32("a", []int64{1}, []float32{1}),
	}, map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	hdr := `{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[1],"data_offsets":[4,5]}}`
	for len(hdr)%8 != 0 {
		hdr += " "
	}
	want := craft(hdr, []byte{0, 0, 0x80, 0x3f, 9})
	if !bytes.Equal(got, want) {
		t.Errorf("file =\n%q\nwant\n%q", got, want)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, %v; want 0644", fi.Mode(), err)
	}
}

func TestWriteAtomicKeepsOldFileOnError(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "model.safetensors")
	if err := Write(p, []Tensor{FromFloat32("a", []int64{1}, []float32{1})}, nil); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(p)
	bad := []Tensor{{Name: "a", DType: F32, Shape: []int64{2}, Data: make([]byte, 4)}}
	if err := Write(p, bad, nil); err == nil || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("Write with wrong byte count: err = %v", err)
	}
	now, _ := os.ReadFile(p)
	if !bytes.Equal(old, now) {
		t.Error("failed Write changed the existing file")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries after a failed write, want only the old file", len(ents))
	}
}

func TestWriteRejectsBadInput(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.safetensors")
	one := Float32Bytes([]float32{1})
	for name, ts := range map[string][]Tensor{
		"duplicate":    {{Name: "x", DType: F32, Shape: []int64{1}, Data: one}, {Name: "x", DType: F32, Shape: []int64{1}, Data: one}},
		"reserved":     {{Name: "__metadata__", DType: F32, Shape: []int64{1}, Data: one}},
		"empty name":   {{Name: "", DType: F32, Shape: []int64{1}, Data: one}},
		"dtype":        {{Name: "x", DType: "F7", Shape: []int64{1}, Data: one}},
		"negative dim": {{Name: "x", DType: F32, Shape: []int64{-1}, Data: one}},
		"size":         {{Name: "x", DType: F32, Shape: []int64{2}, Data: one}},
	} {
		if err := Write(p, ts, nil); err == nil {
			t.Errorf("%s: Write succeeded", name)
		}
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("rejected writes left a file behind: %v", err)
	}
}

func TestAcceptsWhatTheReferenceAccepts(t *testing.T) {
	for name, file := range map[string][]byte{
		"empty header":        craft("{}", nil),
		"padded header":       craft(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}    `+"\n\t", []byte{1, 2}),
		"unknown entry field": craft(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"extra":[1]}}`, []byte{1, 2}),
		"zero-size tensors":   craft(`{"z":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"y":{"dtype":"F32","shape":[3,0],"data_offsets":[2,2]}}`, []byte{1, 2}),
		"null metadata":       craft(`{"__metadata__":null}`, nil),
	} {
		f, err := Open(writeFile(t, file))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		f.Close()
	}
}

func TestCorruptFiles(t *testing.T) {
	u8 := func(name string, begin, end int) string {
		return `"` + name + `":{"dtype":"U8","shape":[` + strconv.Itoa(end-begin) + `],"data_offsets":[` + strconv.Itoa(begin) + `,` + strconv.Itoa(end) + `]}`
	}
	hugeLen := binary.LittleEndian.AppendUint64(nil, MaxHeaderSize+1)
	cases := []struct {
		name   string
		file   []byte
		tensor string // the tensor the error must name, "" for none
		reason string
	}{
		{"shorter than length prefix", []byte{1, 2, 3}, "", "too short"},
		{"header length past end", append(binary.LittleEndian.AppendUint64(nil, 1000), "{}"...), "", "larger than the 2 bytes"},
		{"header over 100 MB", append(hugeLen, "{}"...), "", "exceeds"},
		{"bad JSON", craft(`{"a":{"dtype":`, nil), "a", "bad header JSON"},
		{"bad JSON key", craft(`{,}`, nil), "", "bad header JSON"},
		{"trailing junk after JSON", craft(`{} x`, nil), "", "after the top-level object"},
		{"not an object", craft(`[]`, nil), "", "start with '{'"},
		{"leading whitespace", craft(` {}`, nil), "", "start with '{'"},
		{"invalid UTF-8", craft("{\"\xff\":1}", nil), "", "UTF-8"},
		{"entry not an object", craft(`{"a":[1]}`, nil), "a", "not a JSON object"},
		{"missing dtype", craft(`{"a":{"shape":[1],"data_offsets":[0,1]}}`, []byte{0}), "a", `no "dtype"`},
		{"dtype case", craft(`{"a":{"DTYPE":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{0}), "a", `no "dtype"`},
		{"unknown dtype", craft(`{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}`, []byte{0}), "a", `unknown dtype "F7"`},
		{"negative shape", craft(`{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}`, []byte{0}), "a", `"shape" is malformed`},
		{"three offsets", craft(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}`, []byte{0}), "a", "3 elements"},
		{"end before begin", craft(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[1,0]}}`, []byte{0}), "a", "end before"},
		{"shape overflow", craft(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, make([]byte, 4)), "a", "too many elements"},
		{"shape disagrees with bytes", craft(`{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}`, make([]byte, 8)), "a", "needs 16 bytes"},
		{"overlap", craft(`{`+u8("a", 0, 4)+`,`+u8("b", 2, 6)+`}`, make([]byte, 6)), "b", `overlap tensor "a"`},
		{"gap", craft(`{`+u8("a", 0, 2)+`,`+u8("b", 3, 5)+`}`, make([]byte, 5)), "b", `gap of 1 bytes after tensor "a"`},
		{"not starting at 0", craft(`{`+u8("a", 1, 3)+`}`, make([]byte, 3)), "a", "[0, 1) of the data section unused"},
		{"out of bounds", craft(`{`+u8("a", 0, 2)+`,`+u8("b", 2, 9)+`}`, make([]byte, 4)), "b", "past the end of the 4-byte data section"},
		{"truncated data", craft(`{`+u8("a", 0, 100)+`}`, make([]byte, 60)), "a", "truncated"},
		{"trailing garbage", craft(`{`+u8("a", 0, 2)+`}`, make([]byte, 5)), "", "cover only 2"},
		{"duplicate name", craft(`{`+u8("a", 0, 2)+`,`+u8("a", 2, 4)+`}`, make([]byte, 4)), "a", "twice"},
		{"duplicate metadata", craft(`{"__metadata__":{},"__metadata__":{}}`, nil), "__metadata__", "twice"},
		{"metadata not strings", craft(`{"__metadata__":{"n":1}}`, nil), "", "string values"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeFile(t, c.file)
			f, err := Open(p)
			if err == nil {
				f.Close()
				t.Fatal("Open accepted a corrupt file")
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v (%T), want a *FormatError", err, err)
			}
			if fe.Path != p || fe.Tensor != c.tensor || !strings.Contains(fe.Reason, c.reason) {
				t.Errorf("err = %v\nwant path %s, tensor %q, reason containing %q", err, p, c.tensor, c.reason)
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("message %q does not name the file", err)
			}
		})
	}
}

func TestOpenMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "absent.safetensors")
	_, err := Open(p)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), p) {
		t.Errorf("err = %v, want a not-exist error naming %s", err, p)
	}
}

// TestF16AllValues checks the bit-level conversion against the definition
// of binary16, computed in float64 arithmetic, for all 65536 encodings.
func TestF16AllValues(t *testing.T) {
	for h := range 1 << 16 {
		sign := 1.0
		if h&0x8000 != 0 {
			sign = -1
		}
		e, m := (h>>10)&0x1f, float64(h&0x3ff)
		var want float64
		switch e {
		case 0:
			want = sign * math.Ldexp(m, -24)
		case 0x1f:
			want = math.Inf(int(sign))
			if m != 0 {
				want = math.NaN()
			}
		default:
			want = sign * math.Ldexp(1+m/1024, e-15)
		}
		got := f16ToF32(uint16(h))
		if math.IsNaN(want) {
			// The payload must survive so NaN-boxing tricks round-trip.
			if !math.IsNaN(float64(got)) || math.Float32bits(got)>>13&0x3ff != uint32(h&0x3ff) || math.Signbit(float64(got)) != (sign < 0) {
				t.Fatalf("f16 %#04x -> %#08x, want NaN with payload %#x", h, math.Float32bits(got), h&0x3ff)
			}
			continue
		}
		if float64(got) != want || math.Signbit(float64(got)) != (sign < 0) {
			t.Fatalf("f16 %#04x -> %v, want %v", h, got, want)
		}
	}
}
